"""The command-line clients: `stream`, `watch` and `health`, and what they share."""
