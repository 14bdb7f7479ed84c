"""The gRPC server around the servicer: health, reflection, metrics, shutdown.

`run` is the `actionstream serve` process. `Server` is the same thing as an
object on a running event loop, and `BackgroundServer` runs one on its own
thread for synchronous callers (tests, the demo), each on any port including
0, with the ports actually bound readable afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from actionstream.service.config import ServeConfig
from actionstream.service.inference import InferenceWorker
from actionstream.service.metrics import Metrics, MetricsServer
from actionstream.service.model import ModelError, OnnxStepModel
from actionstream.service.servicer import ActionRecognition
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ActionRecognition"].full_name
_HEALTH_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class ServeError(Exception):
    """The server cannot start, with the reason in words."""


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class Server:
    """A started server: gRPC on `port`, Prometheus on `metrics_port` (None when off)."""

    def __init__(
        self,
        cfg: ServeConfig,
        grpc_server: grpc.aio.Server,
        health: health_aio.HealthServicer,
        worker: InferenceWorker,
        port: int,
        metrics_server: MetricsServer | None,
    ) -> None:
        self.cfg = cfg
        self.port = port
        self._grpc = grpc_server
        self._health = health
        self._worker = worker
        self._metrics_server = metrics_server

    @classmethod
    async def start(
        cls,
        cfg: ServeConfig,
        registry: CollectorRegistry | None = None,
        model: OnnxStepModel | None = None,
    ) -> Server:
        """Loads the model (unless given one), binds the ports and starts serving.

        `registry` receives the metrics (a fresh one if None). Raises ModelError
        or ServeError with a readable reason.
        """
        if model is None:
            model = await asyncio.to_thread(OnnxStepModel.load, cfg.model, cfg.threads)
        metrics = Metrics(registry if registry is not None else CollectorRegistry())
        metrics.describe_model(model.metadata)
        worker = InferenceWorker(model, metrics)

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", cfg.max_message_bytes),
                # Without this a second server on the same port would start and
                # silently share its traffic instead of failing to bind.
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_ActionRecognitionServicer_to_server(
            ActionRecognition(cfg, worker, metrics), server
        )
        health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, _HEALTH_NAME, reflection.SERVICE_NAME), server
        )
        address = _address(cfg.host, cfg.port)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:
            worker.close()
            raise ServeError(f"cannot listen on {address}: {e}") from None

        metrics_server = None
        if cfg.metrics_enabled:
            try:
                metrics_server = MetricsServer(
                    metrics.registry, cfg.metrics_address, cfg.metrics_port
                )
            except OSError as e:
                await server.stop(None)
                worker.close()
                address = _address(cfg.metrics_address, cfg.metrics_port)
                raise ServeError(f"cannot serve metrics on {address}: {e}") from None
        await server.start()
        for name in ("", SERVICE_NAME):
            await health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return cls(cfg, server, health, worker, port, metrics_server)

    @property
    def model(self) -> OnnxStepModel:
        return self._worker.model

    @property
    def metrics_port(self) -> int | None:
        return None if self._metrics_server is None else self._metrics_server.port

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING, lets open RPCs run for `grace` seconds, then cuts them.

        `grace` defaults to the config's grace_seconds.
        """
        await self._health.enter_graceful_shutdown()
        await self._grpc.stop(self.cfg.grace_seconds if grace is None else grace)
        await asyncio.to_thread(self._worker.close)
        if self._metrics_server is not None:
            await asyncio.to_thread(self._metrics_server.close)


class BackgroundServer:
    """A Server on an event loop of its own thread, for synchronous code.

    Use as a context manager, or call `stop()`.
    """

    def __init__(
        self,
        cfg: ServeConfig,
        registry: CollectorRegistry | None = None,
        model: OnnxStepModel | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="actionstream-server", daemon=True
        )
        self._thread.start()
        try:
            self.server = asyncio.run_coroutine_threadsafe(
                Server.start(cfg, registry, model), self._loop
            ).result()
        except BaseException:
            self._close_loop()
            raise

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    @property
    def model(self) -> OnnxStepModel:
        return self.server.model

    def stop(self, grace: float | None = 0.0) -> None:
        """Stops the server (immediately by default) and its thread; again is a no-op."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(grace), self._loop).result()
        self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run(cfg: ServeConfig) -> int:
    """`actionstream serve`: serves until SIGTERM or SIGINT, then shuts down gracefully.

    Returns the process exit code: 0 after a clean shutdown, 1 if the server
    could not start (the reason goes to stderr).
    """
    logging.basicConfig(
        level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return asyncio.run(_serve(cfg))
    except (ModelError, ServeError) as e:
        print(f"actionstream serve: {e}", file=sys.stderr)
        return 1


async def _serve(cfg: ServeConfig) -> int:
    server = await Server.start(cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    metrics = (
        "metrics off"
        if server.metrics_port is None
        else f"metrics on http://{_address(cfg.metrics_address, server.metrics_port)}/metrics"
    )
    # The one line on stdout: parent processes (tests, scripts) read the bound ports from it.
    print(
        f"actionstream serving {server.model.metadata.version} on "
        f"{_address(cfg.host, server.port)}, {metrics}",
        flush=True,
    )
    logger.info("model %s, onnxruntime providers %s", server.model.path, server.model.providers)

    await stop.wait()
    logger.info("shutting down: open streams get %gs to finish", cfg.grace_seconds)
    await server.stop()
    logger.info("stopped")
    return 0
