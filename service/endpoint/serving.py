"""A server as a process: `actionstream serve` in one process (`serve_here`), or one
of `--workers`' processes (`run_worker`); service/endpoint/launch.py chooses.

From the signals that stop it to its exit code: the process's settings that a
server needs (the switch interval, OpenCV's and the native libraries' output),
the ready file, the serving line, a graceful stop, and a hurried one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from actionstream.service import opencv_log
from actionstream.service.config import ServeConfig
from actionstream.service.endpoint import grpc_listener
from actionstream.service.endpoint.launch import (
    ServeError,
    address,
    announce_ready,
    where_metrics,
)
from actionstream.service.endpoint.server import Server
from actionstream.service.endpoint.start_signals import (
    HURRIED_WHILE_STARTING,
    HURRY,
    STOPPED_WHILE_STARTING,
    STOPS,
    hurry_once_started,
    stop_once_started,
    stop_with,
)
from actionstream.service.inference.model import ModelError
from actionstream.service.telemetry import logs, native_stderr
from actionstream.service.telemetry.connections import established_on

logger = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.0005
# How long, once stopped, sources' threads have to let their sources go before the process
# ends without them (_leave_nothing_behind).
SOURCES_RELEASE_S = 1.0


def serve_here(cfg: ServeConfig) -> int:
    """One server in this process until SIGTERM/SIGINT; the exit code (1: it could not
    start, the reason on stderr). Logging is configured by the caller."""
    try:
        return _run_server(cfg, shared_port=False)
    except (ModelError, ServeError) as e:
        logs.cannot_serve(str(e), cfg.log_format)
        return 1


def run_worker(cfg: ServeConfig, error_file: Path, supervisor: int) -> int:
    """One of `serve --workers`' processes: a server on the port the others share, which
    stops when its `supervisor` (a pid) dies.

    Why it could not start goes to `error_file`, for the supervisor to report
    once for all workers (they would all fail alike)."""
    # A terminal's Ctrl-C (or hang-up) reaches every process of its group, and systemd's
    # stop every process of its cgroup: a worker would take that as one stop and the
    # supervisor's SIGTERM after it as a second, ending its streams at once. So a worker
    # ignores SIGINT and SIGHUP, takes SIGTERM as its stop however often it comes, and
    # hurries only on HURRY, which the supervisor sends on a second stop of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal's, as Ctrl-C
    stop_once_started(signal.SIGTERM)
    hurry_once_started()
    stop_with(supervisor)
    logs.configure(cfg.log_level, cfg.log_format)
    try:
        return _run_server(cfg, shared_port=True)
    except (ModelError, ServeError) as e:
        try:
            error_file.write_text(str(e))
        except OSError:
            print(f"actionstream serve worker {os.getpid()}: {e}", file=sys.stderr)
        return 1


def _run_server(cfg: ServeConfig, shared_port: bool) -> int:
    # The decode threads take the GIL back after every OpenCV call while the event
    # loop holds it for gRPC; at Python's default 5 ms switch interval each of those
    # waits could cost a batch 5 ms, so a batch of 30 frames took longer than its work.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # OpenCV warns about some corrupt images (a truncated PNG) on stderr, in a format of its
    # own that breaks JSON logs; the client is told why its frame was refused and the
    # rejected-frames metric counts it, so its warnings add nothing. Its errors still show.
    opencv_log.errors_only()
    # The image libraries under it print straight to stderr; their lines become log lines.
    native_stderr.capture()
    try:
        return asyncio.run(_serve(cfg, shared_port))
    finally:
        if shared_port:  # the loop's handlers are gone: a late HURRY must not kill it
            signal.signal(HURRY, signal.SIG_IGN)


class _StopSignals:
    """The signals that stop a serving loop, then hurry its stop.

    A server alone stops on SIGTERM or SIGINT and hurries (ends its open streams
    at once) on either again. A `--workers` worker stops on SIGTERM, however often
    it comes, and hurries on HURRY from its supervisor (see run_worker).
    """

    def __init__(self, worker: bool) -> None:
        self.stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._stops = (signal.SIGTERM,) if worker else STOPS
        self._hurries = (HURRY,) if worker else self._stops
        self._hurried = False
        self._asked_to_hurry = worker and HURRIED_WHILE_STARTING.is_set()
        for sig in self._stops:
            self._loop.add_signal_handler(sig, self.stop.set)
        if worker:
            self._loop.add_signal_handler(HURRY, self._stop_and_hurry)
        if STOPPED_WHILE_STARTING.is_set():
            logger.info("asked to stop while starting")
            self.stop.set()

    def _stop_and_hurry(self) -> None:  # a HURRY that overtook its SIGTERM
        self._asked_to_hurry = True
        self.stop.set()

    def stopping(self, server: Server) -> None:
        """From now on, the hurry signals end `server`'s open streams at once."""

        def hurry() -> None:
            if not self._hurried:
                self._hurried = True
                logger.info("asked again: ending the open streams now")
                server.hurry()

        for sig in self._stops:
            self._loop.add_signal_handler(sig, lambda: None)  # stopping already
        for sig in self._hurries:
            self._loop.add_signal_handler(sig, hurry)
        if self._asked_to_hurry:
            hurry()


async def _serve(cfg: ServeConfig, shared_port: bool) -> int:
    server = await Server.start(cfg, shared_port=shared_port)
    signals = _StopSignals(worker=shared_port)

    try:
        announce_ready(cfg, server.port, server.metrics_port, model=server.model.metadata.version)
    except ServeError:
        await server.stop(0)
        raise
    # The workers' supervisor announces them, once; a server asked to stop while it
    # started says so instead (above), not that it is serving.
    if not shared_port and not signals.stop.is_set():
        logs.announce(
            f"actionstream serving {server.model.metadata.version} on "
            f"{address(cfg.host, server.port)}, {where_metrics(cfg, server.metrics_port)}",
            cfg.log_format,
        )
    logger.info(
        "model %s, onnxruntime providers %s, gRPC listener %s",
        server.model.path,
        server.model.providers,
        grpc_listener.listener(os.environ),
    )

    await signals.stop.wait()
    logger.info(
        "shutting down: open streams get %gs to finish (stop again to end them now)",
        cfg.grace_seconds,
    )
    signals.stopping(server)
    await server.stop()
    if cfg.ready_file:  # a stale file would announce a server that is gone
        with contextlib.suppress(OSError):  # one that could not be written, say
            Path(cfg.ready_file).unlink(missing_ok=True)
    await _leave_nothing_behind(server)
    logger.info("stopped")
    return 0


async def _leave_nothing_behind(server: Server) -> None:
    """Ends the process now if a WatchSource thread is still inside OpenCV, or gRPC
    still holds client connections it was to close (Server.stop gave up on them).

    A read on a stalled camera returns only at its timeout (--idle-timeout-seconds, 30
    s by default), and the interpreter waits for that thread as it exits: far past a
    container's stop timeout (docker's 10 s), which then kills it. Nothing is left to
    do for such a thread, and an exit that unwound under it would abort (OpenCV's C++
    frames). A connection left open is one whose client still sends (a flood of HTTP/2
    frames): gRPC would read all of it first. So the process ends with os._exit, its
    logs flushed, once the sources have had a moment to be let go.
    """
    deadline = time.monotonic() + SOURCES_RELEASE_S
    while server.sources_busy and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    left = []
    if busy := server.sources_busy:
        left.append(
            f"{busy} source read(s) still in OpenCV (a stalled camera gives up at its read timeout)"
        )
    if server.connections_left:
        left.append(
            "gRPC to close the connections of clients that still send "
            f"({established_on(server.port, [os.getpid()])} open)"
        )
    if left:
        logger.info("stopped, without waiting for %s", " or ".join(left))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
