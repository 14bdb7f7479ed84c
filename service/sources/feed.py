"""A watched source's frames as its stream takes them: counted, resampled, fitted.

A client's frames reach a stream through the servicer's reader; a source the
server opened itself (WatchSource) reaches it through this feed, under the same
rules: every frame read counts as received, frames above the model's rate are
resampled away and counted, and the rest are fitted to the model's input size
off the event loop, ready for the batcher.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client import Counter

from actionstream.resampling import FileClock
from actionstream.service.inference.frames import FrameDecoder
from actionstream.service.inference.streams import PendingFrame, Stream
from actionstream.service.sources.video_source import AsyncVideoSource
from actionstream.v1 import actionstream_pb2 as pb


class SourceFeed:
    """The frames of one opened source that its stream's model is to step."""

    def __init__(
        self,
        source: AsyncVideoSource,
        stream: Stream,
        decoder: FrameDecoder,
        model_fps: float,
        received: Counter,
        resampled: Counter,
    ) -> None:
        self._source = source
        self._stream = stream
        self._decoder = decoder
        self._received = received
        self._resampled = resampled
        # A file is read as fast as the model steps through it, so its frames would all
        # come "now": they are timed by the file's own timeline. A camera's or live
        # stream's frames are timed by when they were read.
        self._clock = None if source.live else FileClock(source.fps or model_fps)

    async def next(self) -> PendingFrame | None:
        """The next frame to step, at the model's size; None once the source has ended.
        Raises SourceError for a frame over max_frame_pixels."""
        while (read := await self._source.read()) is not None:
            image, position_ms = read
            pending = self._take(position_ms)
            if pending is not None:
                pending.image = await asyncio.to_thread(self._decoder.fit, image)
                return pending
        return None

    def _take(self, position_ms: float) -> PendingFrame | None:
        """The frame read at `position_ms`, counted; None when it is resampled away."""
        received = time.perf_counter()  # "received" when OpenCV hands it over
        self._received.inc()
        stream = self._stream
        sequence = stream.number(0)
        if self._clock is None:
            timestamp_us = time.time_ns() // 1000
        else:
            timestamp_us = round(self._clock.next(position_ms) * 1e6)
        if not stream.resampler.take(timestamp_us):
            stream.resampled_away()
            self._resampled.inc()
            return None
        return PendingFrame(pb.Frame(timestamp_us=timestamp_us), None, sequence, received, False)
