"""Every call the server takes, counted by method: the denominator of an error ratio.

`actionstream_rpc_errors` alone says how many calls failed, not out of how
many; this interceptor counts each call of a method the server has as it
starts (before the other interceptors may end it), so that

    sum(rate(actionstream_rpc_errors_total[5m])) / sum(rate(actionstream_rpcs_started_total[5m]))

is the share of calls that ended in an error. A method the server does not
have (UNIMPLEMENTED, answered by gRPC itself) is counted in neither.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from actionstream.service.telemetry.metrics import Metrics


class CallCount(grpc.aio.ServerInterceptor):
    """Counts each call of a served method in `actionstream_rpcs_started`."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is not None:
            self._metrics.started(details.method.rsplit("/", 1)[-1]).inc()
        return handler
