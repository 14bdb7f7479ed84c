"""The gRPC server around the servicer: health, reflection, metrics, shutdown.

`Server` is a server as an object on a running event loop, on any port including
0, with the ports actually bound readable afterwards. service/endpoint/serving.py
runs one as a process (`actionstream serve`, or one of `--workers`' processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2
from prometheus_client import CollectorRegistry

from actionstream.service.config import ServeConfig
from actionstream.service.endpoint.call_count import CallCount
from actionstream.service.endpoint.health import Health
from actionstream.service.endpoint.launch import (
    ServeError,
    address,
    bind_problem,
    serve_metrics,
)
from actionstream.service.endpoint.malformed import MalformedRequests
from actionstream.service.endpoint.servicer import ActionRecognition
from actionstream.service.endpoint.side_calls import SideCallLimit
from actionstream.service.endpoint.unary_requests import UnaryRequestDeadline
from actionstream.service.inference.batcher import Batcher
from actionstream.service.inference.frames import FrameDecoder
from actionstream.service.inference.model import OnnxStepModel
from actionstream.service.telemetry.connections import Connections
from actionstream.service.telemetry.metrics import Metrics
from actionstream.service.telemetry.metrics_http import MetricsServer
from actionstream.service.telemetry.processes import Processes
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

# The shortest time between a client's keepalive pings the server takes, while it sends
# nothing (README: clients may ping every 10 s or more).
MIN_PING_INTERVAL_MS = 5_000
# A client connection with no call open this long is closed (HTTP/2 GOAWAY; its client's
# next call connects again), and one that has not sent HTTP/2's preface and settings in
# HANDSHAKE_TIMEOUT_MS (gRPC's default: 2 minutes): under --max-connections, connections
# left open and unused would otherwise hold their places until their clients go.
CONNECTION_IDLE_MS = 60_000
HANDSHAKE_TIMEOUT_MS = 10_000
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ActionRecognition"].full_name
# How long the streams cut at the grace period's end have to send their own status and
# trailer (a loop turn each) before gRPC cancels what is left.
CUT_OFF_S = 0.5
# How long gRPC has to close its client connections once every call is over. Its stop
# returns only when they are closed, and it reads what a connection has sent before
# closing it: a client flooding HTTP/2 frames held a stopped server for as long as it
# sent (23 and 26 s after SIGTERM in two trials). Past this the process ends without it
# (serving.py).
CONNECTIONS_CLOSE_S = 2.0
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
        self._hurried = asyncio.Event()
        # Set by stop: client connections gRPC had not closed when it gave up on them.
        self.connections_left = False

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
        # Its own registry: the process's figures belong on it (a worker's are the
        # supervisor's to sum).
        own_process = registry is None and not shared_port
        if registry is None:
            registry = CollectorRegistry()
        if own_process:
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
            if own_process:
                registry.register(Connections(lambda: [os.getpid()], port, cfg.connections_cap))
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

    def hurry(self) -> None:
        """Stopping, asked again (a second Ctrl-C): `stop` cuts the open calls now rather
        than at the grace period's end."""
        self._hurried.set()

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets open RPCs run for `grace` seconds (or until `hurry`),
        then cuts them.

        `grace` defaults to the config's grace_seconds. Returns once the calls are over
        and gRPC has closed its connections, or CONNECTIONS_CLOSE_S after the cut with
        `connections_left` set.
        """
        await self._health.enter_graceful_shutdown()
        grace = self.cfg.grace_seconds if grace is None else grace
        # gRPC would cancel the calls still open at the grace period's end, and the
        # client of a stream cut so would get no trailer, with the frames skipped after
        # its last answer. So the servicer ends its streams itself then, and gRPC cancels
        # what is left (health Watch and reflection calls) CUT_OFF_S later.
        stopping = {asyncio.ensure_future(self._grpc.stop(grace + CUT_OFF_S))}
        hurried = asyncio.ensure_future(self._hurried.wait())
        await asyncio.wait({*stopping, hurried}, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        hurried.cancel()
        still_open = {f for f in stopping if not f.done()}
        if still_open:
            await self._servicer.cut_off(CUT_OFF_S)
            stopping.add(asyncio.ensure_future(self._grpc.stop(None)))  # the streams are done
            _, still_open = await asyncio.wait(stopping, timeout=CONNECTIONS_CLOSE_S)
        self.connections_left = bool(still_open)
        await self._servicer.close()
        await self._batcher.stop()
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)


def _grpc_options(cfg: ServeConfig, shared_port: bool) -> list[tuple[str, int]]:
    """gRPC's server options for `cfg`; `shared_port` for one of `--workers`' processes."""
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        # Compressed requests are refused (UNIMPLEMENTED) as their headers arrive: camera
        # frames are compressed already, and a gzip message is inflated whole before any
        # limit but its size applies: 300 messages of 8 KB that each inflated to 8 MiB
        # took the server from 114 to 608 MB, which it kept.
        ("grpc.compression_enabled_algorithms_bitset", 1),  # identity alone
        # Checked as a connection is accepted, before any byte is read from it.
        ("grpc.max_allowed_incoming_connections", cfg.connections_cap),
        ("grpc.max_connection_idle_ms", CONNECTION_IDLE_MS),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
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
