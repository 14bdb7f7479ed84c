"""Requests that are not the message their method takes: INVALID_ARGUMENT, counted.

gRPC parses a unary request before any handler runs; bytes that are not
the method's message make it answer UNKNOWN with the parser's exception
("Unexpected <class 'google.protobuf.message.DecodeError'>: ...") and log
the traceback, for every such request, in no metric. This interceptor gives
each unary-request method (GetModelInfo, WatchSource, health Check and
Watch) a parser that hands such bytes on as MALFORMED, and ends those calls
with INVALID_ARGUMENT, the method and the message type named, counted in
`actionstream_rpc_errors`. A stream's requests are parsed as its handler
reads them: StreamFrames answers a malformed one so itself; for the other
services' (reflection's), the interceptor ends the requests there and, once
the handler is done, the call likewise.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from actionstream.service.endpoint.behaviours import after_step
from actionstream.service.telemetry.metrics import Metrics
from actionstream.service.trailers import REASON


class _Malformed:
    """What the parser hands on for bytes that are not the method's message."""


MALFORMED = _Malformed()
# The model's service, whose StreamFrames answers malformed requests itself.
OWN_SERVICE = "/actionstream.v1."


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Ends a unary-request call whose request does not parse with INVALID_ARGUMENT."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        name = details.method.rsplit("/", 1)[-1]
        if (
            handler.stream_stream is not None
            and not details.method.startswith(OWN_SERVICE)
            and inspect.isasyncgenfunction(handler.stream_stream)  # as reflection's is
        ):
            what = _message_name(handler.request_deserializer)
            return grpc.stream_stream_rpc_method_handler(
                self._checked_requests(handler.stream_stream, name, what),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.request_streaming:
            return handler
        parse = _tolerant(handler.request_deserializer)
        what = _message_name(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._checked(handler.unary_unary, name, what),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._checked(handler.unary_stream, name, what),
                request_deserializer=parse,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _checked(self, behaviour: Callable[..., Any], name: str, what: str) -> Callable[..., Any]:
        """`behaviour` behind the check of its one request, in its own form (behaviours.py)."""

        async def check(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if request is MALFORMED:
                await self._refuse(context, name, what)
            return request

        return after_step(behaviour, check)

    def _checked_requests(
        self, behaviour: Callable[..., Any], name: str, what: str
    ) -> Callable[..., Any]:
        """A stream-request `behaviour` (an async generator, as reflection's is) reading
        requests that end at the first malformed one; its call then ends with
        INVALID_ARGUMENT."""

        async def generator(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            malformed = False

            async def parsed() -> AsyncIterator[Any]:
                nonlocal malformed
                try:
                    async for request in requests:
                        yield request
                except DecodeError:
                    malformed = True

            async for response in behaviour(parsed(), context):
                yield response
            if malformed:
                await self._refuse(context, name, what)

        return generator

    async def _refuse(self, context: grpc.aio.ServicerContext, name: str, what: str) -> None:
        code = grpc.StatusCode.INVALID_ARGUMENT
        self._metrics.rpc_errors.labels(method=name, code=code.name).inc()
        await context.abort(code, f"the request is not a valid {what}", ((REASON, "malformed"),))


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, or whatever else the parser refuses bytes with
            return MALFORMED

    return parse_or_mark


def _message_name(parse: Callable[[bytes], Any]) -> str:
    """The message type a parser makes (its FromString's class), for the status."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", None)
    return name if isinstance(name, str) else "request for this method"
