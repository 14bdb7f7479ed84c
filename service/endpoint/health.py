"""gRPC's standard health service, whole, with its failures counted.

grpcio-health-checking's asyncio servicer leaves `List` (every service's status at
once, added to `grpc.health.v1` after `Check` and `Watch`) unimplemented: a call
got UNIMPLEMENTED with Python's exception class in its message, and the server
logged a traceback for each. `Check` of a service the server does not have ends
NOT_FOUND, which no metric counted, so a probe configured with a wrong service
name showed in no error ratio.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from actionstream.service.telemetry.metrics import Metrics


class Health(health_aio.HealthServicer):
    """Check, Watch and List of the services' statuses set with `set`."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in self._server_status:
            code = grpc.StatusCode.NOT_FOUND
            self._metrics.rpc_errors.labels(method="Check", code=code.name).inc()
        answer: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return answer

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthListResponse:
        return health_pb2.HealthListResponse(
            statuses={
                service: health_pb2.HealthCheckResponse(status=status)
                for service, status in self._server_status.items()
            }
        )
