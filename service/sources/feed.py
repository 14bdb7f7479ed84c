"""A watched source's frames as its stream takes them: counted, resampled, fitted.

A client's frames reach a stream through the servicer's reader; a source the
server opened itself (WatchSource) reaches it through this feed. Both pass
the same rules (inference/intake.py): every frame read counts as received,
and frames above the model's rate are resampled away and counted. The rest
are fitted here to the model's input size off the event loop, ready for the
batcher.
"""

from __future__ import annotations

import asyncio
import time

from actionstream.resampling import FileClock
from actionstream.service.inference.frames import FrameDecoder
from actionstream.service.inference.intake import Intake
from actionstream.service.inference.streams import PendingFrame, Stream
from actionstream.service.sources.video_source import AsyncVideoSource


class SourceFeed:
    """The frames of one opened source that its stream's model is to step."""

    def __init__(
        self,
        source: AsyncVideoSource,
        stream: Stream,
        intake: Intake,
        decoder: FrameDecoder,
        model_fps: float,
    ) -> None:
        self._source = source
        self._stream = stream
        self._intake = intake
        self._decoder = decoder
        # A file is read as fast as the model steps through it, so its frames would all
        # come "now": they are timed by the file's own timeline. A camera's or live
        # stream's frames are timed by when they were read.
        self._clock = None if source.live else FileClock(source.fps or model_fps)

    async def next(self) -> PendingFrame | None:
        """The next frame to step, at the model's size; None once the source has ended.
        Raises SourceError for a frame over max_frame_pixels."""
        while (read := await self._source.read()) is not None:
            received = time.perf_counter()  # "received" when OpenCV hands it over
            image, position_ms = read
            if self._clock is None:
                timestamp_us = time.time_ns() // 1000
            else:
                timestamp_us = round(self._clock.next(position_ms) * 1e6)
            pending = self._intake.source_frame(self._stream, received, timestamp_us)
            if pending is not None:
                pending.image = await asyncio.to_thread(self._decoder.fit, image)
                return pending
        return None
