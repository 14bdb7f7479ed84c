"""A cap on the long calls of the services beside the model: health Watch and reflection.

A health `Watch` call stays open until its client goes, and so does a
reflection stream that never sends: each holds about 20 KB of server memory.
They take no place among `--max-streams` and never reach the servicer, so
nothing else bounds them: 5,000 silent Watch calls took the server from 110
to 198 MB, 20,000 reflection calls to 480 MB. At `--max-side-calls` open
ones, a new one ends at once with RESOURCE_EXHAUSTED. Cameras, unary health
`Check` (what Docker and Kubernetes probes use) and `GetModelInfo` are never
capped here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from actionstream.service.endpoint.behaviours import after_step
from actionstream.service.telemetry.metrics import Metrics

# Methods whose calls stay open as long as the client likes.
CAPPED = (
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)


class SideCallLimit(grpc.aio.ServerInterceptor):
    """Ends a capped method's call at once while `limit` of them are open."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self._limit = limit
        self._metrics = metrics
        self._open = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method not in CAPPED:
            return handler
        name = details.method.rsplit("/", 1)[1]
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._capped(handler.unary_stream, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._capped(handler.stream_stream, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _capped(self, behaviour: Callable[..., Any], name: str) -> Callable[..., Any]:
        """`behaviour` behind the cap, in its own form (behaviours.py)."""

        async def enter(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await self._enter(name, context)
            return request

        return after_step(behaviour, enter, self._leave)

    async def _enter(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if self._open >= self._limit:
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self._metrics.rpc_errors.labels(method=name, code=code.name).inc()
            await context.abort(
                code,
                f"{self._limit} health Watch and reflection calls are open, the most this "
                "server keeps (max_side_calls); close one and retry",
            )
        self._open += 1
        self._metrics.side_calls.inc()

    def _leave(self) -> None:
        self._open -= 1
        self._metrics.side_calls.dec()
