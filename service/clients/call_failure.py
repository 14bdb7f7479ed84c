"""How a failed call ended, as `stream` and `watch` read it from gRPC and tell it."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from actionstream.service.trailers import reason_in, skipped_in


@dataclass(frozen=True)
class CallFailure:
    """A call's status when it failed, and what its trailer said."""

    code: grpc.StatusCode
    details: str | None
    reason: str | None = None  # the server's, from the trailer (trailers.REASON)
    skipped: int = 0  # frames the server skipped after its last answer, from the trailer

    @classmethod
    def of(cls, error: grpc.RpcError) -> CallFailure:
        code, details = error.code(), error.details()
        if not isinstance(error, grpc.Call):  # only a call's end carries a trailer
            return cls(code, details)
        trailer = error.trailing_metadata()
        return cls(code, details, reason_in(trailer), skipped_in(trailer))

    def __str__(self) -> str:
        return f"{self.code.name}: {self.details}"

    def describe(self, reached: bool, unreachable: str, ended: str) -> str:
        """The run's error line. Before `reached` (the client's to say), UNAVAILABLE is a
        wrong address or a server that is down: `unreachable` says it in the client's
        words; anything else the server ended, as `ended` says."""
        if self.code == grpc.StatusCode.UNAVAILABLE and not reached:
            return f"{unreachable}: {self.details}"
        return f"{ended} with {self}"
