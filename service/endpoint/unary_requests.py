"""A call of a one-request method gets a bounded time, among a bounded number, to send it.

gRPC reads a one-request method's request before any handler runs, and waits for it
as long as the client likes: calls of GetModelInfo, WatchSource or health's Check
and Watch that never sent their request stayed open whatever the idle timeout, and
60,000 of them took the server from 151 to 320 MB, past every cap it has (they reach
neither the servicer nor the side-call cap). This interceptor hands gRPC each such
method as one that streams its requests, so that the server reads the request
itself: within `timeout_s` (the idle timeout), or the call ends with
DEADLINE_EXCEEDED; and while `limit` calls wait for theirs, a new one ends the one
that has waited longest with RESOURCE_EXHAUSTED, as calls waiting for a first frame
are evicted (places.py): a flood evicts its own calls, while a probe or a client,
which sends its request with the call, waits microseconds. On the wire nothing
changes: one request either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from actionstream.service.endpoint.behaviours import after_step
from actionstream.service.endpoint.refusals import deadline_passed
from actionstream.service.telemetry.metrics import Metrics
from actionstream.service.trailers import REASON

# How long a call whose requests ended without one waits for gRPC's cancellation of it
# before it is refused as sent without its request (INVALID_ARGUMENT).
CANCELLATION_WAIT_S = 0.1


class UnaryRequestDeadline(grpc.aio.ServerInterceptor):
    """Reads a one-request method's request under a deadline and a cap on calls waiting."""

    def __init__(self, timeout_s: float, limit: int, metrics: Metrics) -> None:
        self._timeout_s = timeout_s
        self._limit = limit
        self._metrics = metrics
        self._waiting: dict[asyncio.Event, None] = {}  # each call's eviction, oldest first

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        name = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._reading(handler.unary_unary, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._reading(handler.unary_stream, name),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _reading(self, behaviour: Callable[..., Any], name: str) -> Callable[..., Any]:
        """`behaviour` handed the one request this reads, in its own form (behaviours.py)."""

        async def read(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await self._request(requests, context, name)

        return after_step(behaviour, read)

    async def _request(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, name: str
    ) -> Any:
        """The call's one request; ends the call (abort) when it does not come in time,
        never comes, or the call is evicted while it waits."""
        while len(self._waiting) >= self._limit:
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]
            oldest.set()
        evicted = asyncio.Event()
        self._waiting[evicted] = None
        arrival = asyncio.ensure_future(anext(requests))
        eviction = asyncio.ensure_future(evicted.wait())
        try:
            await asyncio.wait(
                (arrival, eviction), timeout=self._timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            self._waiting.pop(evicted, None)
            eviction.cancel()
            if not arrival.done():
                arrival.cancel()
            elif not arrival.cancelled():
                # Taken even when this call is being cancelled, so that asyncio has no
                # error of it left to log ("Task exception was never retrieved").
                arrival.exception()
        if arrival.done() and not arrival.cancelled():
            try:
                return arrival.result()
            except StopAsyncIteration:
                # The client's end of the call comes as the requests' end: a client that
                # cancels, whose deadline passes or whose connection closes ends them
                # before gRPC cancels this handler, which then interrupts this wait. One
                # turn of the loop let 123 of 1,500 calls on closed connections be counted
                # as sent without their request.
                await asyncio.sleep(CANCELLATION_WAIT_S)
                if deadline_passed(context):
                    await self._end(
                        context, name, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"
                    )
                await self._end(
                    context,
                    name,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the call ended without its request",
                    "missing",
                )
        if evicted.is_set():
            await self._end(
                context,
                name,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"no request yet, and the server was at its limit of {self._limit} calls "
                "waiting for one: the longest-waiting call was ended to make room",
                "evicted",
            )
        await self._end(
            context,
            name,
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no request for {self._timeout_s:g} s (idle_timeout_seconds); the call was ended",
            "idle",
        )

    async def _end(
        self,
        context: grpc.aio.ServicerContext,
        name: str,
        code: grpc.StatusCode,
        details: str,
        reason: str | None = None,
    ) -> None:
        """Ends the call; `reason` for the client (trailers.REASON), as the servicer's
        refusals give one."""
        self._metrics.rpc_errors.labels(method=name, code=code.name).inc()
        await context.abort(code, details, ((REASON, reason),) if reason else ())
