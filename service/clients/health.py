"""`actionstream health`: asks a server's grpc.health.v1 service whether it is SERVING.

Made for container health checks and scripts: the exit code is the answer
(0 serving, 1 anything else), with one line saying what was seen. Its host
and port read ACTIONSTREAM_HOST and ACTIONSTREAM_PORT like `serve` does, so
inside a container configured by environment it asks the server it sits
beside (a listen-on-everything host means this machine).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actionstream.service.config import HealthConfig


def check(cfg: HealthConfig) -> tuple[bool, str]:
    """(serving, what was seen)."""
    with grpc.insecure_channel(cfg.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=cfg.service)
        try:
            reply = stub.Check(request, timeout=cfg.timeout)
        except grpc.RpcError as e:
            details = e.details()
            if not details and e.code() == grpc.StatusCode.NOT_FOUND:
                # grpc's health servicer gives no details for a name it does not know.
                details = f"the server has no health status for service {cfg.service!r}"
            return False, f"{cfg.target}: {e.code().name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{cfg.target}: {status}"
