"""`actionstream health`: asks a server's grpc.health.v1 service whether it is SERVING.

Made for container health checks and scripts: the exit code is the answer
(0 serving, 1 anything else), with one line saying what was seen. Its port
reads ACTIONSTREAM_PORT like `serve` does, so inside a container configured
by environment it asks the server it sits beside.
"""

from __future__ import annotations

from dataclasses import dataclass

from actionstream.settings import setting


@dataclass(frozen=True)
class HealthConfig:
    """Which server to ask, and how long to wait."""

    host: str = setting("127.0.0.1", help="server address")
    port: int = setting(50051, help="server gRPC port")
    service: str = setting("", help="service to ask about; empty asks about the whole server")
    timeout: float = setting(3.0, help="seconds to wait for the answer")

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, got {self.port}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def check(cfg: HealthConfig) -> tuple[bool, str]:
    """(serving, what was seen)."""
    # Here, not at the top: the command line imports this module, and `serve` must choose
    # gRPC's listener before grpc loads (service/grpc_listener.py).
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(cfg.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service=cfg.service)
        try:
            reply = stub.Check(request, timeout=cfg.timeout)
        except grpc.RpcError as e:
            return False, f"{cfg.target}: {e.code().name}: {e.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{cfg.target}: {status}"
