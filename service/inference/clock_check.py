"""Whether a stream's capture timestamps are in the unit the API asks for."""

from __future__ import annotations

from actionstream.service.inference.frames import FrameError


class ClockCheck:
    """Whether a stream's capture timestamps could be microseconds, judged once.

    A camera that sends milliseconds in `timestamp_us` claims a thousand times
    its frame rate: the resampler would keep about one frame in a thousand, and
    the stream be answered once every couple of minutes, each answer reporting
    its hundreds of frames skipped. One that sends nanoseconds claims a
    thousandth of it: every frame is taken, a 30 fps camera's as if 10 fps
    apart, and the model, seeing motion three times as fast as it learnt, is
    wrong most of the time (37% against 94% in one trial). So once a stream has
    sent for a while, its timestamps' advance is set against the time its
    frames took to arrive; one far slower (a hundredth or less) or far faster
    (`FASTEST` times or more) refuses the frame, saying why. A file sent faster
    than real time does that rightly, but not that much faster: a 30 fps file
    would take 15,000 frames a second.
    """

    MIN_FRAMES = 10
    MIN_SECONDS = 2.0
    SLOWEST = 0.01  # timestamp advance per second of arrivals, below which it refuses
    FASTEST = 500.0  # and above which

    def __init__(self) -> None:
        self.done = False
        self._first: tuple[int, float] | None = None  # (timestamp_us, arrival)
        self._frames = 0

    def check(self, timestamp_us: int, arrival: float) -> None:
        """Raises FrameError once judged too slow or too fast to be microseconds; after
        the one judgement (either way), `done` holds and there is nothing more to check."""
        if self._first is None:
            self._first = (timestamp_us, arrival)
        self._frames += 1
        first_us, first_arrival = self._first
        seconds = arrival - first_arrival
        if self._frames < self.MIN_FRAMES or seconds < self.MIN_SECONDS:
            return
        self.done = True
        advance_us = timestamp_us - first_us
        send = "send microseconds, or 0 to have each frame timed as it arrives"
        over = f"over {seconds:.1f} s of its frames arriving"
        if advance_us == 0:
            raise FrameError(
                f"the stream's capture timestamps did not advance {over} (a clock that "
                f"does not move?), so only its first frame would be answered: {send}",
                "slow_timestamps",
            )
        if 0 < advance_us < self.SLOWEST * seconds * 1e6:
            raise FrameError(
                f"the stream's capture timestamps advanced {advance_us / 1e3:.1f} ms {over}; "
                "timestamp_us is in microseconds (are these milliseconds?), and frames "
                "closer than the model's period are skipped, so almost none would be "
                f"answered: {send}",
                "slow_timestamps",
            )
        if advance_us > self.FASTEST * seconds * 1e6:
            raise FrameError(
                f"the stream's capture timestamps advanced {advance_us / 1e6:,.0f} s {over}; "
                "timestamp_us is in microseconds (are these nanoseconds?), and frames "
                "that far apart are each taken as one model period apart, so the model "
                f"would see its motion sped up: {send}",
                "fast_timestamps",
            )
