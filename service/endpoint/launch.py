"""How `actionstream serve` starts: one server in this process, or a supervisor
of several (`--workers`). Nothing heavy is imported until it is known which,
so a supervisor never loads onnxruntime or OpenCV it has no use for.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from actionstream.service.config import ENV_PREFIX, ServeConfig
from actionstream.service.endpoint import grpc_listener
from actionstream.service.telemetry import logs

logger = logging.getLogger(__name__)

# compose.yaml's own ACTIONSTREAM_IMAGE names the image for compose, never the server's.
_OTHER_VARIABLES = frozenset({"ACTIONSTREAM_IMAGE"})
# Kubernetes' service links for a Service named actionstream, where a pod leaves them on
# (deploy/k8s turns them off): ACTIONSTREAM_SERVICE_HOST, ACTIONSTREAM_PORT_50051_TCP...
_SERVICE_LINKS = ("ACTIONSTREAM_SERVICE_", "ACTIONSTREAM_PORT_")


class ServeError(Exception):
    """The server cannot start, with the reason in words."""


# A stop asked for while the server starts (imports, the model's load and warm-up): the
# server stops as soon as it is up. Without it a SIGTERM then killed the process, and
# as a container's PID 1, which has no default signal actions, was ignored outright:
# `docker stop` in the first second waited out its 10 s and killed the container.
STOPPED_WHILE_STARTING = threading.Event()
# What a `--workers` supervisor sends its workers on a second stop: end the open streams
# now. Not SIGTERM, which a worker may get twice for one stop (see run_worker).
HURRY = signal.SIGUSR1
HURRIED_WHILE_STARTING = threading.Event()


def hurry_once_started() -> None:
    """A worker's HURRY before its serving loop takes it (its default would kill the
    worker, resetting connections): noted, it stops and ends its streams once up."""
    signal.signal(HURRY, _hurry_while_starting)


def _hurry_while_starting(signum: int, frame: FrameType | None) -> None:
    HURRIED_WHILE_STARTING.set()
    STOPPED_WHILE_STARTING.set()


def stop_once_started(*signals: signal.Signals) -> None:
    """From now until the server takes its own signal handlers, `signals` (default:
    SIGTERM and SIGINT) stop it as soon as it is up."""
    for sig in signals or (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_while_starting)


def _stop_while_starting(signum: int, frame: FrameType | None) -> None:
    if STOPPED_WHILE_STARTING.is_set():
        # Asked again (a model load that hangs, an impatient Ctrl-C): nothing is served
        # yet, so nothing is cut. os.write and os._exit, as a signal handler may.
        os.write(2, b"actionstream serve: stopped while starting\n")
        os._exit(128 + signum)
    STOPPED_WHILE_STARTING.set()


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


def warn_unknown_variables(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Warns of ACTIONSTREAM_* variables that are no setting: a misspelt one
    (ACTIONSTREAM_GRACE for ACTIONSTREAM_GRACE_SECONDS) is otherwise ignored without a
    word, and the server runs with the default. Returns the warnings."""
    known = {ENV_PREFIX + f.name.upper() for f in dataclasses.fields(ServeConfig)}
    said = []
    for name in sorted(environ):
        if name.startswith(_SERVICE_LINKS) or name in known | _OTHER_VARIABLES:
            continue
        if name.startswith(ENV_PREFIX):
            close = _closest_setting(name, known)
            hint = f" (did you mean {close}?)" if close else ""
            said.append(f"{name} is not a setting of serve{hint}; it is ignored")
            logger.warning("%s", said[-1])
    return said


def _closest_setting(name: str, known: set[str]) -> str | None:
    """The setting a misspelt variable most likely meant, if one is close. Compared
    without the prefix they all share, which alone made any name "close" to some
    setting (ACTIONSTREAM_BOGUS to ACTIONSTREAM_HOST); one cut short is its setting's."""
    given = name.removeprefix(ENV_PREFIX)
    suffixes = sorted(k.removeprefix(ENV_PREFIX) for k in known)
    begun = [s for s in suffixes if s.startswith(given)]
    # Cut short of one setting only: ACTIONSTREAM_MAX begins five, and names none.
    close = begun if len(begun) == 1 and len(given) >= 3 else []
    close = close or difflib.get_close_matches(given, suffixes, n=1, cutoff=0.75)
    return ENV_PREFIX + close[0] if close else None


def changed_settings(cfg: ServeConfig) -> str:
    """The settings that differ from their defaults, as name=value: what an operator
    changed, to check against what they meant."""
    return ", ".join(
        f"{f.name}={getattr(cfg, f.name)!r}"
        for f in dataclasses.fields(cfg)
        if f.default is not dataclasses.MISSING and getattr(cfg, f.name) != f.default
    )


def run(cfg: ServeConfig) -> int:
    """`actionstream serve`: serves until SIGTERM or SIGINT, then shuts down gracefully.

    Returns the process exit code: 0 after a clean shutdown, 1 if the server
    could not start (the reason goes to stderr).
    """
    stop_once_started()
    logs.configure(cfg.log_level, "json" if cfg.log_format == "json" else "text")
    warn_unknown_variables(os.environ)
    logger.info("settings: %s", changed_settings(cfg) or "the defaults")
    # gRPC reads its experiments once, as it loads: only a process that has not loaded it
    # yet can still choose the listener, for itself and for the workers it starts.
    if "grpc" not in sys.modules:
        grpc_listener.prefer_iomgr(os.environ)
    if cfg.workers == 1:
        from actionstream.service.endpoint.server import serve_here

        return serve_here(cfg)
    from actionstream.service.endpoint.workers import supervise

    try:
        return supervise(cfg)
    except ServeError as e:
        logs.cannot_serve(str(e), cfg.log_format)
        return 1
