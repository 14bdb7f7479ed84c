"""`actionstream serve --workers N`: N server processes on one port.

One Python process runs gRPC's event loop and its decode threads under one
interpreter lock, so under load it leaves the other cores of a machine idle.
With `--workers N` the `serve` process becomes a supervisor, the way grpc's
own multiprocessing example serves:

- it reserves the port with a socket bound (not listening) with SO_REUSEPORT,
  so port 0 resolves once and every worker binds the same one;
- it starts N workers (multiprocessing, spawned: no gRPC state crosses a
  fork), each a whole server of its own with its own model session, batcher
  and health service; the kernel spreads new connections over them, and a
  stream stays on the worker that accepted its connection;
- it serves one /metrics for all of them from prometheus_client's
  multiprocess files (counters and histograms add up, the active-streams
  gauge sums the live workers);
- it stops them together on SIGTERM, SIGINT or SIGHUP; a worker stops by itself
  if the supervisor dies (see start_signals.stop_with);
- it starts a new worker in place of one that dies (a crash in native code, the
  OOM killer), so the other workers' streams go on; a replacement that cannot
  start or would serve another model, or workers that keep dying, stop the
  server with exit code 1, since restarting will not cure that (Docker or
  Kubernetes then restart it whole).

What it costs: each worker batches only its own streams (smaller batches at
the same load), each holds its own copy of the model, and `--max-streams` is
shared out equally, so a stream may be refused by a full worker while another
has room.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path

from actionstream.service.config import ServeConfig
from actionstream.service.endpoint.launch import (
    ServeError,
    address,
    announce_ready,
    serve_metrics,
    where_metrics,
)
from actionstream.service.endpoint.start_signals import HURRY, STOPPED_WHILE_STARTING, STOPS
from actionstream.service.telemetry import logs
from actionstream.service.telemetry.worker_restarts import WorkerRestarts

logger = logging.getLogger(__name__)

# A worker loads the model and warms every batch size before it is ready.
STARTUP_TIMEOUT_S = 120.0
# After the grace period a worker still has its own shutdown to finish.
STOP_MARGIN_S = 10.0
# More deaths than this within RESTART_WINDOW_S are a fault a new worker will not
# cure (a model that crashes on some input, a memory limit too small for N workers).
MAX_RESTARTS = 3
RESTART_WINDOW_S = 60.0


def supervise(cfg: ServeConfig) -> int:
    """Runs `cfg.workers` servers on one port until SIGTERM/SIGINT; the exit code."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ServeError("--workers above 1 needs SO_REUSEPORT, which this system lacks")
    stop = threading.Event()
    for sig in STOPS:
        signal.signal(sig, lambda *_: stop.set())
    if STOPPED_WHILE_STARTING.is_set():  # before the handlers above
        logger.info("asked to stop while starting")
        stop.set()
    try:
        scratch = tempfile.TemporaryDirectory(prefix="actionstream-serve-")
    except OSError as e:
        raise ServeError(
            f"--workers needs a writable temporary directory (TMPDIR, else /tmp): {e}"
        ) from None
    with scratch as tmp:
        metrics_dir = Path(tmp, "metrics")
        metrics_dir.mkdir()
        # Read by prometheus_client as it is imported, in each spawned worker.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        with _reserve_port(cfg.host, cfg.port) as reserved:
            port = int(reserved.getsockname()[1])
            return _supervise(cfg, port, metrics_dir, Path(tmp), stop)


def _supervise(
    cfg: ServeConfig, port: int, metrics_dir: Path, tmp: Path, stop: threading.Event
) -> int:
    from prometheus_client import CollectorRegistry, multiprocess

    from actionstream.service.telemetry.connections import Connections
    from actionstream.service.telemetry.processes import Processes

    metrics_server = None
    workers: list[BaseProcess] = []
    restarts = WorkerRestarts()

    def on_stop(*_: object) -> None:
        if stop.is_set():  # asked again: the workers end their open streams now
            for worker in workers:
                if worker.is_alive() and worker.pid is not None:
                    os.kill(worker.pid, HURRY)
        stop.set()

    for sig in STOPS:
        signal.signal(sig, on_stop)
    if cfg.metrics_enabled:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))
        # The supervisor and whichever workers are running now (read at each scrape).
        registry.register(Processes(lambda: [os.getpid(), *(w.pid for w in workers if w.pid)]))
        registry.register(restarts)
        registry.register(
            Connections(lambda: [w.pid for w in workers if w.pid], port, cfg.connections_cap)
        )
        metrics_server = serve_metrics(registry, cfg)
    context = multiprocessing.get_context("spawn")

    def spawn(i: int) -> BaseProcess:
        for stale in (tmp / f"worker-{i}.json", tmp / f"worker-{i}.error"):
            stale.unlink(missing_ok=True)  # a replacement's, left by the one before
        worker = context.Process(
            target=_worker_main,
            args=(_worker_config(cfg, port, tmp, i), tmp / f"worker-{i}.error", os.getpid()),
            name=f"actionstream-worker-{i}",
        )
        worker.start()
        return worker

    ready = None
    try:
        for i in range(cfg.workers):
            if stop.is_set():  # asked to stop while the others started
                break
            workers.append(spawn(i))
        if stop.is_set():
            return 0
        ready = _wait_ready(workers, tmp, stop)
        if ready is None:
            return 0 if stop.is_set() else 1
        metrics_port = None if metrics_server is None else metrics_server.port
        model = ready

        def announce() -> None:
            announce_ready(cfg, port, metrics_port, model=model, workers=[w.pid for w in workers])

        announce()
        if not stop.is_set():  # asked to stop while starting: it said so, not this
            logs.announce(
                f"actionstream serving {ready} on {address(cfg.host, port)} from "
                f"{cfg.workers} worker processes, {where_metrics(cfg, metrics_port)}",
                cfg.log_format,
            )
        pool = _Replacing(workers, spawn, tmp, metrics_dir, restarts, announce, model)
        return _watch(pool, stop)
    finally:
        _stop_all(workers, cfg.grace_seconds + STOP_MARGIN_S, metrics_dir)
        if metrics_server is not None:
            metrics_server.close()
        if cfg.ready_file:
            with contextlib.suppress(OSError):  # one that could not be written, say
                Path(cfg.ready_file).unlink(missing_ok=True)
        if ready is not None or stop.is_set():  # one that failed to start says why, only
            logger.info("stopped")


def _worker_config(cfg: ServeConfig, port: int, tmp: Path, i: int) -> ServeConfig:
    """Worker `i`'s settings: the server's, on the reserved port, with its share of
    the limits, no metrics port of its own, and a ready file the supervisor reads."""
    return replace(
        cfg,
        port=port,
        metrics_port=-1,
        workers=1,
        max_streams=share_of(cfg.max_streams, cfg.workers, i),
        # Unset, each worker derives its own from its share of max_streams.
        max_waiting_calls=None
        if cfg.max_waiting_calls is None
        else max(1, share_of(cfg.max_waiting_calls, cfg.workers, i)),
        # At least one each: a worker without any would refuse every health Watch.
        max_side_calls=max(1, share_of(cfg.max_side_calls, cfg.workers, i)),
        max_connections=share_of(cfg.connections_cap, cfg.workers, i),
        ready_file=str(tmp / f"worker-{i}.json"),
    )


def share_of(total: int, workers: int, i: int) -> int:
    """Worker `i`'s share of a limit: `total` shared out whole, the first workers taking
    one more where it does not divide, so that together they take exactly `total`."""
    return total // workers + (i < total % workers)


def _worker_main(cfg: ServeConfig, error_file: Path, supervisor: int) -> None:
    # In the worker: its first heavy import.
    from actionstream.service.endpoint.serving import run_worker

    # A process target's return value is lost: the exit code must be raised.
    sys.exit(run_worker(cfg, error_file, supervisor))


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket holding `host:port` (port 0: a free one) for the workers to share."""
    try:
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        if port:
            _refuse_if_taken(family, kind, proto, where, host, port)
        sock = socket.socket(family, kind, proto)
    except OSError as e:
        raise ServeError(f"cannot listen on {address(host, port)}: {e}") from None
    try:
        # SO_REUSEADDR for the bind: without it, the connections a server on this port
        # closed moments ago (TIME_WAIT, up to a minute) refuse it, so a restart from one
        # process to several would fail until they expire. Cleared once bound: a bound,
        # not listening socket with it lets any other SO_REUSEADDR socket (a plain
        # server's, any user's) take the port while the workers start.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(where)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {address(host, port)}: {e.strerror}") from None
    return sock


def _refuse_if_taken(
    family: socket.AddressFamily,
    kind: socket.SocketKind,
    proto: int,
    where: tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes],
    host: str,
    port: int,
) -> None:
    """Raises ServeError if anything listens on the port already. The workers' sockets
    share it through SO_REUSEPORT, which would as gladly share it with another
    `--workers` server of the same user, splitting the traffic between the two without
    an error; a socket bound without it fails as a plain server's does. Two `--workers`
    servers started at the same instant can both pass it before either binds: this
    catches the server left running, not that race."""
    with socket.socket(family, kind, proto) as probe:
        # As for the reservation: connections closed moments ago must not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as e:
            raise ServeError(f"cannot listen on {address(host, port)}: {e.strerror}") from None


def _wait_ready(workers: list[BaseProcess], tmp: Path, stop: threading.Event) -> str | None:
    """The served model's version once every worker is serving; None if one died
    first, or a stop came, or they took too long. Raises ServeError with the
    reason a worker gave for not starting (a model it cannot load, say)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    files = [tmp / f"worker-{i}.json" for i in range(len(workers))]
    while not all(f.exists() for f in files):
        for i, worker in enumerate(workers):
            if worker.exitcode is not None:
                _raise_start_error(tmp, i)
                logger.error(
                    "%s exited with %s while starting; stopping the others",
                    worker.name,
                    worker.exitcode,
                )
                return None
        if stop.is_set():
            return None
        if time.monotonic() > deadline:
            logger.error("the workers were not all serving within %gs", STARTUP_TIMEOUT_S)
            return None
        time.sleep(0.05)
    return str(json.loads(files[0].read_text())["model"])


@dataclass
class _Replacing:
    """What `_watch` needs to put a new worker in a dead one's place."""

    workers: list[BaseProcess]  # by slot; a replacement takes its slot in place
    spawn: Callable[[int], BaseProcess]
    tmp: Path
    metrics_dir: Path
    restarts: WorkerRestarts
    announce: Callable[[], None]  # rewrites the ready file with the workers' pids
    model: str  # the version the workers serve: a replacement must serve it too


def _watch(pool: _Replacing, stop: threading.Event) -> int:
    """Waits for a stop (0), replacing each worker that exits on its own; 1 if a
    replacement cannot start, would serve another model than the others, or workers
    keep dying (ServeError with a replacement's own reason for not starting, as at
    start)."""
    from prometheus_client import multiprocess

    workers = pool.workers
    deaths: deque[float] = deque()
    starting: dict[int, float] = {}  # slot -> when its replacement was started
    while not stop.is_set():
        if multiprocessing.connection.wait([w.sentinel for w in workers], timeout=0.2):
            # A stop that reached a worker before this process (the group's, or a
            # systemd stop to the whole cgroup) is a stop, not a death.
            if stop.wait(0.5):
                break
            for i, dead in enumerate(workers):
                if dead.exitcode is None:
                    continue
                if i in starting:
                    _raise_start_error(pool.tmp, i)
                    logger.error(
                        "%s, started in place of one that died, exited with %s while "
                        "starting; stopping the others",
                        *(dead.name, dead.exitcode),
                    )
                    return 1
                now = time.monotonic()
                deaths.append(now)
                while deaths[0] < now - RESTART_WINDOW_S:
                    deaths.popleft()
                if len(deaths) > MAX_RESTARTS:
                    logger.error(
                        "%s (pid %s) exited with %s, %d workers dead within %gs; "
                        "stopping the others",
                        *(dead.name, dead.pid, dead.exitcode, len(deaths), RESTART_WINDOW_S),
                    )
                    return 1
                logger.error(
                    "%s (pid %s) exited with %s; starting another in its place",
                    *(dead.name, dead.pid, dead.exitcode),
                )
                if dead.pid is not None:  # its streams are gone from the gauges
                    multiprocess.mark_process_dead(dead.pid, str(pool.metrics_dir))
                workers[i] = pool.spawn(i)
                starting[i] = now
                pool.restarts.inc()
        for i, since in list(starting.items()):
            ready = pool.tmp / f"worker-{i}.json"
            if ready.exists():
                del starting[i]
                serves = str(json.loads(ready.read_text())["model"])
                if serves != pool.model:
                    # A model file replaced under the server (a volume updated in place):
                    # one server would answer with two models. Restarted whole, it
                    # serves the new one alone.
                    logger.error(
                        "%s, started in place of one that died, serves %s, not %s: the "
                        "model file changed under the server; stopping the others",
                        *(workers[i].name, serves, pool.model),
                    )
                    return 1
                logger.info("%s (pid %s) is serving", workers[i].name, workers[i].pid)
                if not starting:  # the ready file lists workers that serve
                    try:
                        pool.announce()
                    except ServeError as e:  # written at start; the server serves on
                        logger.error("%s", e)
            elif time.monotonic() - since > STARTUP_TIMEOUT_S:
                logger.error(
                    "%s was not serving within %gs; stopping the others",
                    *(workers[i].name, STARTUP_TIMEOUT_S),
                )
                return 1
    logger.info("shutting down %d workers", len(workers))
    return 0


def _raise_start_error(tmp: Path, i: int) -> None:
    """Raises ServeError with the reason worker `i` left for not starting, if any."""
    reason = tmp / f"worker-{i}.error"
    if reason.exists():
        raise ServeError(reason.read_text())


def _stop_all(workers: list[BaseProcess], timeout: float, metrics_dir: Path) -> None:
    """SIGTERM to every live worker (each shuts down gracefully), SIGKILL after `timeout`."""
    from prometheus_client import multiprocess

    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.error("%s did not stop within %gs; killing it", worker.name, timeout)
            worker.kill()
            worker.join()
        if worker.pid is not None:
            multiprocess.mark_process_dead(worker.pid, str(metrics_dir))
