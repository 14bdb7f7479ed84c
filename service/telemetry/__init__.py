"""What the server tells its operators: Prometheus metrics, log lines, and the
native libraries' stderr turned into log lines."""
