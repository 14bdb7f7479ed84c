"""The gRPC server around the servicer: health, reflection, metrics, shutdown.

`serve_here` is `actionstream serve` in one process, `run_worker` one of
`--workers`' processes (service/endpoint/launch.py chooses). `Server` is the same thing
as an object on a running event loop, on any port including 0, with the ports
actually bound readable afterwards (and written to `--ready-file`).
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

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from actionstream.service import opencv_log
from actionstream.service.config import ServeConfig
from actionstream.service.endpoint import grpc_listener
from actionstream.service.endpoint.call_count import CallCount
from actionstream.service.endpoint.health import Health
from actionstream.service.endpoint.launch import (
    ServeError,
    address,
    announce_ready,
    bind_problem,
    serve_metrics,
    where_metrics,
)
from actionstream.service.endpoint.malformed import MalformedRequests
from actionstream.service.endpoint.servicer import ActionRecognition
from actionstream.service.endpoint.side_calls import SideCallLimit
from actionstream.service.endpoint.start_signals import (
    HURRIED_WHILE_STARTING,
    HURRY,
    STOPPED_WHILE_STARTING,
    STOPS,
    hurry_once_started,
    stop_once_started,
    stop_with,
)
from actionstream.service.endpoint.unary_requests import UnaryRequestDeadline
from actionstream.service.inference.batcher import Batcher
from actionstream.service.inference.frames import FrameDecoder
from actionstream.service.inference.model import ModelError, OnnxStepModel
from actionstream.service.telemetry import logs, native_stderr
from actionstream.service.telemetry.metrics import Metrics
from actionstream.service.telemetry.metrics_http import MetricsServer
from actionstream.service.telemetry.processes import Processes
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)
SWITCH_INTERVAL_S = 0.0005

# The shortest time between a client's keepalive pings the server takes, while it sends
# nothing (README: clients may ping every 10 s or more).
MIN_PING_INTERVAL_MS = 5_000
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ActionRecognition"].full_name
# How long, once stopped, sources' threads have to let their sources go before the process
# ends without them (_leave_no_source_behind).
SOURCES_RELEASE_S = 1.0
# How long the streams cut at the grace period's end have to send their own status and
# trailer (a loop turn each) before gRPC cancels what is left.
CUT_OFF_S = 0.5
# Every service the server answers: it reflects them all, and counts each of their
# methods' calls from 0.
SERVED = (
    pb.DESCRIPTOR.services_by_name["ActionRecognition"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
SERVED_METHODS = tuple(method.name for service in SERVED for method in service.methods)


class Server:
    """A started server: gRPC on `port`, Prometheus on `metrics_port` (None when off)."""

    def __init__(
        self,
        cfg: ServeConfig,
        grpc_server: grpc.aio.Server,
        health: Health,
        servicer: ActionRecognition,
        batcher: Batcher,
        port: int,
        metrics_server: MetricsServer | None,
    ) -> None:
        self.cfg = cfg
        self.port = port
        self._grpc = grpc_server
        self._health = health
        self._servicer = servicer
        self._batcher = batcher
        self._metrics_server = metrics_server

    @classmethod
    async def start(
        cls,
        cfg: ServeConfig,
        registry: CollectorRegistry | None = None,
        model: OnnxStepModel | None = None,
        shared_port: bool = False,
    ) -> Server:
        """Loads the model (unless given one), binds the ports and starts serving.

        `registry` receives the metrics (a fresh one if None). `shared_port`:
        one of `serve --workers`' processes, binding the port with the others.
        Raises ModelError or ServeError with a readable reason.
        """
        if model is None:
            model = await asyncio.to_thread(OnnxStepModel.load, cfg.model, cfg.threads)
        if registry is None:
            registry = CollectorRegistry()
            # Its own registry: the process's figures belong on it (a worker's are the
            # supervisor's to sum).
            if not shared_port:
                registry.register(Processes(lambda: [os.getpid()]))
        metrics = Metrics(registry, SERVED_METHODS)
        metrics.describe_model(model.metadata)
        meta = model.metadata
        decoder = FrameDecoder(
            meta.height, meta.width, cfg.max_frame_bytes, cfg.max_frame_pixels, cfg.jpeg_floor
        )
        batcher = Batcher(
            model,
            decoder,
            metrics,
            cfg.max_batch,
            cfg.max_batch_wait_ms / 1e3,
            cfg.decode_threads,
            cfg.inference_nice,
        )
        await asyncio.to_thread(batcher.warm_up)
        # Whatever fails from here (the port, the metrics port, gRPC's own start) undoes
        # what was built, in reverse, in one place: an embedded server that cannot start
        # leaves no batch threads or bound sockets behind.
        async with contextlib.AsyncExitStack() as undo:
            batcher.start()
            undo.push_async_callback(batcher.stop)
            servicer = ActionRecognition(cfg, batcher, metrics, worker=shared_port)
            undo.push_async_callback(servicer.close)
            server = grpc.aio.server(
                interceptors=[
                    CallCount(metrics),
                    UnaryRequestDeadline(cfg.idle_timeout_seconds, cfg.waiting_calls_cap, metrics),
                    MalformedRequests(metrics),
                    SideCallLimit(cfg.max_side_calls, metrics),
                ],
                options=_grpc_options(cfg, shared_port),
            )
            undo.push_async_callback(server.stop, None)
            pb_grpc.add_ActionRecognitionServicer_to_server(servicer, server)
            health = Health(metrics)
            health_pb2_grpc.add_HealthServicer_to_server(health, server)
            reflection.enable_server_reflection([service.full_name for service in SERVED], server)
            where = address(cfg.host, cfg.port)
            try:
                port = server.add_insecure_port(where)
            except RuntimeError as e:
                raise ServeError(
                    # A worker's port is held by its supervisor: a probe would find it taken.
                    f"cannot listen on {where}: "
                    f"{e if shared_port else bind_problem(cfg.host, cfg.port, e)}"
                ) from None
            metrics_server = serve_metrics(metrics.registry, cfg)
            if metrics_server is not None:
                undo.callback(metrics_server.close)
            await server.start()
            for name in ("", SERVICE_NAME):
                await health.set(name, health_pb2.HealthCheckResponse.SERVING)
            undo.pop_all()  # serving: the Server stops them
        return cls(cfg, server, health, servicer, batcher, port, metrics_server)

    @property
    def model(self) -> OnnxStepModel:
        return self._batcher.model

    @property
    def sources_busy(self) -> int:
        """WatchSource threads still in OpenCV (or releasing a source) after the calls."""
        return self._servicer.sources_busy

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    async def hurry(self) -> None:
        """Stopping, asked again (a second Ctrl-C): the open calls are cut now rather
        than at the grace period's end. gRPC keeps the earliest of its stop deadlines."""
        await self._servicer.cut_off(CUT_OFF_S)
        await self._grpc.stop(None)

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets open RPCs run for `grace` seconds, then cuts them.

        `grace` defaults to the config's grace_seconds.
        """
        await self._health.enter_graceful_shutdown()
        grace = self.cfg.grace_seconds if grace is None else grace
        # gRPC would cancel the calls still open at the grace period's end, and the
        # client of a stream cut so would get no trailer, with the frames skipped after
        # its last answer. So the servicer ends its streams itself then, and gRPC cancels
        # what is left (health Watch and reflection calls) CUT_OFF_S later.
        stopping = asyncio.ensure_future(self._grpc.stop(grace + CUT_OFF_S))
        _, still_open = await asyncio.wait({stopping}, timeout=grace)
        if still_open:
            await self._servicer.cut_off(CUT_OFF_S)
            await self._grpc.stop(None)  # the rest now: the streams are done
        await stopping
        await self._servicer.close()
        await self._batcher.stop()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)


def _grpc_options(cfg: ServeConfig, shared_port: bool) -> list[tuple[str, int]]:
    """gRPC's server options for `cfg`; `shared_port` for one of `--workers`' processes."""
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        # Without this a second server on the same port would start and
        # silently share its traffic instead of failing to bind; only
        # `--workers` processes share a port, on purpose.
        ("grpc.so_reuseport", int(shared_port)),
        # Clients that vanish without closing their connection (power cut, network
        # gone) are found by keepalive pings, so their streams end and free their place.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # And clients may ping it (`actionstream stream` does, every 20 s, to find a
        # server gone without a reset), on a stream that is quiet between frames
        # and on a connection with no call open: gRPC's defaults take pings more
        # often than every 5 minutes on a quiet connection, or any ping while no
        # call is open, as abuse, and end the connection with its streams
        # (GOAWAY "too_many_pings"). Half the 10 s the README tells clients, so
        # that a client's ping every 10 s never arrives early.
        ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # No grace option: a stream open when its connection is asked to move on
        # keeps its state and runs as long as its camera sends.
        *(
            [("grpc.max_connection_age_ms", round(cfg.max_connection_age_seconds * 1e3))]
            if cfg.max_connection_age_seconds
            else []
        ),
    ]


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
        self._hurried: asyncio.Task[None] | None = None
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
            if self._hurried is None:
                logger.info("asked again: ending the open streams now")
                self._hurried = asyncio.create_task(server.hurry())

        for sig in self._stops:
            self._loop.add_signal_handler(sig, lambda: None)  # stopping already
        for sig in self._hurries:
            self._loop.add_signal_handler(sig, hurry)
        if self._asked_to_hurry:
            hurry()

    async def stopped(self) -> None:
        if self._hurried is not None:
            await self._hurried


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
    await signals.stopped()
    if cfg.ready_file:  # a stale file would announce a server that is gone
        with contextlib.suppress(OSError):  # one that could not be written, say
            Path(cfg.ready_file).unlink(missing_ok=True)
    await _leave_no_source_behind(server)
    logger.info("stopped")
    return 0


async def _leave_no_source_behind(server: Server) -> None:
    """Ends the process now if a WatchSource thread is still inside OpenCV.

    A read on a stalled camera returns only at its timeout (--idle-timeout-seconds, 30
    s by default), and the interpreter waits for that thread as it exits: far past a
    container's stop timeout (docker's 10 s), which then kills it. Nothing is left to
    do for such a thread, and an exit that unwound under it would abort (OpenCV's C++
    frames): the process ends with os._exit, its logs flushed, once the others have
    had a moment to let their sources go.
    """
    deadline = time.monotonic() + SOURCES_RELEASE_S
    while server.sources_busy and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    busy = server.sources_busy
    if busy:
        logger.info(
            "stopped, without waiting for %d source read(s) still in OpenCV (a stalled "
            "camera gives up at its read timeout)",
            busy,
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
