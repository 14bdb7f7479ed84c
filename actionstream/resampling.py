"""Which frames of a source the model sees: one rule for training, evaluation and serving.

A model is trained at one frame rate; cameras and files come at any other.
`Resampler` decides, frame by frame from capture times, which frames to
step: the server applies it to every stream, and training and evaluation to
every decoded video, so a model is scored and trained on exactly the frames
it would be served. Pure Python, no runtime: both sides import it.
"""

from __future__ import annotations

import math


class Resampler:
    """Takes frames at the model's rate by their capture time (microseconds).

    Frames are accepted on a grid one model period apart, each within a
    quarter period before its slot, so a 30 fps camera feeds a 10 fps model
    every third frame and a 10 fps camera with jitter feeds it every frame.
    A slower camera is taken frame by frame: each frame is stepped once,
    never repeated, so the model sees more motion per step than at its own
    rate (a repeated frame would show its frame-difference input no motion
    at all). A timestamp earlier than the grid expects (reordered or
    repeated frames) is skipped; one that jumps back by more than a second
    (the camera's clock was reset) or forward by more than a period (a gap)
    restarts the grid.
    """

    _RESET_BACK_US = 1_000_000

    def __init__(self, fps: float) -> None:
        self._period = 1e6 / fps
        self._due = -math.inf  # earliest time the next frame may have
        self._last = 0

    def take(self, t_us: int) -> bool:
        restart = t_us < self._last - self._RESET_BACK_US or t_us >= self._due + self._period
        self._last = t_us
        if restart:
            self._due = t_us + self._period
            return True
        if t_us < self._due - self._period / 4:
            return False
        self._due += self._period
        return True


class FileClock:
    """Capture times along a video file, from the positions its container reports.

    OpenCV gives the position of the frame just read (CAP_PROP_POS_MSEC).
    Containers without timestamps report 0 after the first frame, so frames
    are then counted at the file's frame rate. Times never go backwards,
    whatever the container says: a file has one timeline. A position that
    jumps back by more than a second (recordings joined end to end, a
    transport stream's clock wrapping) goes on one frame after the last time
    instead: held at the latest time, every later frame would be thinned away.
    """

    _JUMP_BACK_S = 1.0

    def __init__(self, fps: float) -> None:
        self._fps = fps
        self._index = 0
        self._t = -math.inf
        self._offset = 0.0  # added to the container's positions after a jump back

    def next(self, pos_ms: float) -> float:
        """The next frame's capture time in seconds; `pos_ms` is what OpenCV reported
        as its position right after reading it."""
        pos = pos_ms / 1000.0
        if pos > 0 or self._index == 0:
            if pos + self._offset < self._t - self._JUMP_BACK_S:
                self._offset = self._t + 1 / self._fps - pos
            t = pos + self._offset
        else:
            t = self._index / self._fps
        self._t = max(self._t, t)
        self._index += 1
        return self._t
