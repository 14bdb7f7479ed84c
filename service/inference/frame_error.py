"""The one error a frame the server cannot use raises, with its reason for the metrics."""

from __future__ import annotations

from actionstream.service.telemetry.metrics import RejectReason


class FrameError(ValueError):
    """A frame that cannot be used; the message is meant for the client."""

    def __init__(self, message: str, reason: RejectReason) -> None:
        super().__init__(message)
        self.reason: RejectReason = reason
