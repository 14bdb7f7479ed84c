"""A real Server on an event loop of its own thread, for synchronous test code."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from prometheus_client import CollectorRegistry

from actionstream.service.config import ServeConfig
from actionstream.service.endpoint.server import Server
from actionstream.service.inference.model import OnnxStepModel


class BackgroundServer(contextlib.AbstractContextManager["BackgroundServer"]):
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

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
