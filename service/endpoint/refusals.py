"""How a stream's call ends when the server ends it: a status, and a reason to count.

A refusal is raised as `Refused` and turned into the call's status by the
handler as it returns, rather than by `context.abort()`: grpc.aio sends an
abort's status before the handler unwinds, so a client could see its error
before the stream's place was freed and the error counted.
"""

from __future__ import annotations

import typing

import grpc

from actionstream.service.inference.streams import FrameRejected
from actionstream.service.telemetry.metrics import EndReason, RejectReason


class Refused(Exception):
    """Ends the RPC with `code` and `details`; `reason` labels the streams-ended metric,
    and `told` (a refused frame's reason, else `reason`) goes to the client in the
    trailer (trailers.REASON)."""

    def __init__(
        self, code: grpc.StatusCode, details: str, reason: EndReason, told: str | None = None
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason
        self.told: str = told or reason


def sources_off() -> Refused:
    """WatchSource's status on a server started without --allow-sources."""
    return Refused(
        grpc.StatusCode.PERMISSION_DENIED,
        "WatchSource is disabled on this server, because it lets clients make the "
        "server open files, cameras and URLs; start it with --allow-sources "
        "(or ACTIONSTREAM_ALLOW_SOURCES=true) on a trusted network to enable it",
        "invalid_source",
    )


# A frame over --max-frame-bytes gets the code gRPC itself gives a message over
# its size limit, so a client sees one answer for "too big" wherever the line
# is drawn; every other bad frame is the client's mistake to fix.
_REFUSAL_CODES: dict[RejectReason, grpc.StatusCode] = {
    reason: grpc.StatusCode.INVALID_ARGUMENT for reason in typing.get_args(RejectReason)
} | {"too_many_bytes": grpc.StatusCode.RESOURCE_EXHAUSTED}


def as_refused(error: Exception) -> Refused:
    """The status a stream's failure ends its call with, when it is a refusal; re-raises
    any other failure, a fault of the server's own (so `raise as_refused(e)` may raise
    that fault instead, for the handler to end the call with INTERNAL)."""
    if isinstance(error, Refused):
        return error
    if isinstance(error, FrameRejected):
        code = _REFUSAL_CODES[error.error.reason]
        return Refused(
            code, f"frame {error.sequence}: {error.error}", "invalid_frame", error.error.reason
        )
    raise error


# A call cancelled this close to its deadline was ended by it (see deadline_passed).
DEADLINE_MARGIN_S = 0.25


def deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """The client set a deadline, and it has passed, or all but: gRPC ended the call for
    it. The server's deadline runs from the request's arrival, so it ends a little after
    the client's, which cancels the call first: measured here, 5-7 ms before."""
    remaining = context.time_remaining()
    return remaining is not None and remaining < DEADLINE_MARGIN_S
