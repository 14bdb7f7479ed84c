"""A stream's frames on their way to the batcher: counted, numbered, checked, resampled.

A client's frames (the servicer's reader) and a watched source's
(sources/feed.py) pass the same rules here, so that the two cannot drift
apart: every frame counts as received and takes the stream's next sequence
number; frames above the model's rate are resampled away, counted, and
reported by the next frame queued. A client's frame also has its headers
checked first (a bad one ends the stream, the frame's number quoted), and
its stream's first frame admits the stream; a source's stream was admitted
when its call opened, and its frames were made by the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from actionstream.service.inference.frames import FrameDecoder, FrameError
from actionstream.service.inference.streams import FrameRejected, PendingFrame, Stream
from actionstream.service.telemetry.metrics import Metrics
from actionstream.v1 import actionstream_pb2 as pb


class Intake:
    """The rules every frame of every stream passes before it is queued."""

    def __init__(
        self,
        decoder: FrameDecoder,
        metrics: Metrics,
        heavy_pixels: int,
        admit: Callable[[Stream], None],
    ) -> None:
        """`admit` gives a stream its place and state on its first frame, or raises to
        refuse it (the exception ends the stream, and reaches the caller of client_frame)."""
        self._decoder = decoder  # `check` must foresee what the batcher decodes
        self._metrics = metrics
        self._heavy_pixels = heavy_pixels
        self._admit = admit
        self._received = metrics.frames_received
        self._resampled = metrics.dropped("resampled")

    def client_frame(self, stream: Stream, frame: pb.Frame) -> PendingFrame | None:
        """The client's frame to queue; None when it is resampled away, or rejected (the
        stream then ends once the frames before it are answered: Stream.reject)."""
        received = time.perf_counter()
        self._received.inc()
        sequence = stream.number(frame.sequence)
        try:
            checked = self._decoder.check(frame)
            if frame.timestamp_us and not stream.clock.done:
                stream.clock.check(frame.timestamp_us, time.monotonic())
        except FrameError as e:
            self._metrics.rejected(e.reason).inc()
            stream.reject(FrameRejected(sequence, e))
            return None
        if not stream.admitted:  # not `state`: a stateless model's is {} once admitted
            self._admit(stream)
        if self._resampled_away(stream, frame.timestamp_us or time.time_ns() // 1000):
            return None
        heavy = checked.work > self._heavy_pixels
        return PendingFrame(frame, checked, sequence, received, heavy=heavy)

    def source_frame(
        self, stream: Stream, received: float, timestamp_us: int
    ) -> PendingFrame | None:
        """A watched source's frame, read at `received` (perf_counter()) and captured at
        `timestamp_us`, to queue once decoded; None when it is resampled away."""
        self._received.inc()
        sequence = stream.number(0)
        if self._resampled_away(stream, timestamp_us):
            return None
        frame = pb.Frame(timestamp_us=timestamp_us)
        return PendingFrame(frame, None, sequence, received, heavy=False)

    def _resampled_away(self, stream: Stream, timestamp_us: int) -> bool:
        """Whether the resampler skips a frame captured at `timestamp_us`: counted, and
        reported to the client by the stream's next frame queued."""
        if stream.resampler.take(timestamp_us):
            return False
        stream.resampled_away()
        self._resampled.inc()
        return True
