"""How `actionstream serve` starts: one server in this process, or a supervisor
of several (`--workers`), and what both do alike as they start (their ports, the
ready file, the line that says where metrics are). Nothing heavy is imported until
it is known which, so a supervisor never loads onnxruntime or OpenCV it has no use
for.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from actionstream.service.config import ServeConfig
from actionstream.service.endpoint import grpc_listener
from actionstream.service.endpoint.settings_check import changed_settings, warn_unknown_variables
from actionstream.service.endpoint.start_signals import stop_once_started
from actionstream.service.telemetry import logs

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from actionstream.service.telemetry.metrics_http import MetricsServer

logger = logging.getLogger(__name__)


class ServeError(Exception):
    """The server cannot start, with the reason in words."""


def address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def bind_problem(host: str, port: int, error: Exception) -> str:
    """Why gRPC could not listen on `host:port`, in the system's words. gRPC's own are
    "Failed to bind to address ...; set GRPC_VERBOSITY=debug", with the reason only in
    a log line of its own; binding a plain socket there again finds it."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(where)
    except OSError as e:
        return e.strerror or str(e)
    return str(error)


def write_ready_file(path: Path, port: int, metrics_port: int | None, **more: object) -> None:
    """The bound ports (and `more`) as JSON, written whole or not at all (a reader
    never sees half)."""
    ready = {"port": port, "metrics_port": metrics_port, "pid": os.getpid(), **more}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(ready) + "\n")
    tmp.replace(path)


def check_ready_file(cfg: ServeConfig) -> None:
    """Fails now, before a model is loaded or a worker started, where `cfg`'s ready file
    could not be written once the server is up; ServeError in announce_ready's words."""
    if not cfg.ready_file:
        return
    path = Path(cfg.ready_file)
    probe = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # write_ready_file's own
    try:
        if path.is_dir():  # the file would replace it
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ServeError(f"cannot write the ready file {cfg.ready_file}: {e.strerror}") from None


def announce_ready(cfg: ServeConfig, port: int, metrics_port: int | None, **more: object) -> None:
    """Writes `cfg`'s ready file, if it names one; ServeError if it cannot."""
    if not cfg.ready_file:
        return
    try:
        write_ready_file(
            Path(cfg.ready_file), port, metrics_port, grpc_listener=cfg.grpc_listener, **more
        )
    except OSError as e:
        raise ServeError(f"cannot write the ready file {cfg.ready_file}: {e.strerror}") from None


def serve_metrics(registry: CollectorRegistry, cfg: ServeConfig) -> MetricsServer | None:
    """`registry` served at /metrics where `cfg` asks for it (None when off); ServeError
    if its port cannot be had."""
    if not cfg.metrics_enabled:
        return None
    from actionstream.service.telemetry.metrics_http import MetricsServer

    try:
        return MetricsServer(registry, cfg.metrics_address, cfg.metrics_port)
    except OSError as e:
        where = address(cfg.metrics_address, cfg.metrics_port)
        raise ServeError(f"cannot serve metrics on {where}: {e}") from None


def where_metrics(cfg: ServeConfig, metrics_port: int | None) -> str:
    """Where the metrics are served, as the serving line says it."""
    if metrics_port is None:
        return "metrics off"
    return f"metrics on http://{address(cfg.metrics_address, metrics_port)}/metrics"


def run(cfg: ServeConfig) -> int:
    """`actionstream serve`: serves until SIGTERM or SIGINT, then shuts down gracefully.

    Returns the process exit code: 0 after a clean shutdown, 1 if the server
    could not start (the reason goes to stderr).
    """
    stop_once_started()
    logs.configure(cfg.log_level, cfg.log_format)
    warn_unknown_variables(os.environ)
    logger.info("settings: %s", changed_settings(cfg) or "the defaults")
    try:
        check_ready_file(cfg)
        # gRPC reads its experiments once, as it loads (the command line loads none of it).
        if "grpc" in sys.modules and grpc_listener.listener(os.environ) != cfg.grpc_listener:
            raise ServeError(
                f"gRPC was loaded before serve could ask it for its {cfg.grpc_listener} "
                f"listener: set {grpc_listener.VARIABLE} before this process starts"
            )
        grpc_listener.ask(os.environ, cfg.grpc_listener)
    except (ServeError, ValueError) as e:
        logs.cannot_serve(str(e), cfg.log_format)
        return 1
    if cfg.workers == 1:
        from actionstream.service.endpoint.serving import serve_here

        return serve_here(cfg)
    from actionstream.service.endpoint.workers import supervise

    try:
        return supervise(cfg)
    except ServeError as e:
        logs.cannot_serve(str(e), cfg.log_format)
        return 1
