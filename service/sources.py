"""Video sources opened with OpenCV: a camera index, a file, or a stream URL.

Shared by WatchSource (the server reads the source) and the `stream` client
(the client reads it and pushes frames). Opening and reading block, so async
callers run them in a thread.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np


class SourceError(Exception):
    """A source that cannot be read, with the reason in words."""


class SourceNotFound(SourceError):
    """Nothing is there: no such file, camera or reachable URL."""


class VideoSource:
    """An open cv2.VideoCapture; `source` is "0" (camera index), a path, or a URL."""

    def __init__(self, source: str) -> None:
        """Opens the source now; raises SourceError (or SourceNotFound) if it cannot."""
        if not source.strip():
            raise SourceError("source is empty; give a camera index, a video file or a URL")
        self.source = source
        if source.isdigit():
            self._capture = cv2.VideoCapture(int(source))
            if not self._capture.isOpened():
                raise SourceNotFound(f"camera {source} could not be opened")
            return
        if "://" not in source and not Path(source).exists():
            raise SourceNotFound(f"no such video file: {source}")
        self._capture = cv2.VideoCapture(source)
        if not self._capture.isOpened():
            if "://" in source:
                raise SourceNotFound(f"could not open stream {source}")
            raise SourceError(f"OpenCV cannot read {source} as a video")

    @property
    def fps(self) -> float | None:
        """The source's frame rate, if it reports a usable one (cameras often do not)."""
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        return fps if math.isfinite(fps) and fps > 0 else None

    def read(self) -> np.ndarray | None:
        """The next frame as uint8 (H, W, 3) BGR, or None when the source has ended."""
        ok, frame = self._capture.read()
        return frame if ok else None

    def close(self) -> None:
        self._capture.release()


class AsyncVideoSource:
    """A VideoSource for asyncio code, its blocking calls on one thread of its own.

    A cancelled RPC stops awaiting a read while OpenCV may still be inside it;
    releasing the capture from another thread at that moment is undefined
    behaviour, so the release is queued behind the read on the same thread.
    """

    def __init__(self, source: VideoSource, executor: ThreadPoolExecutor) -> None:
        self._source = source
        self._executor = executor

    @classmethod
    async def open(cls, source: str) -> AsyncVideoSource:
        """Opens `source` like VideoSource does, off the event loop."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source")
        try:
            opened = await asyncio.get_running_loop().run_in_executor(executor, VideoSource, source)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(opened, executor)

    async def read(self) -> np.ndarray | None:
        """The next frame, or None when the source has ended."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._source.read)

    def close(self) -> None:
        """Releases the source once any read in flight has returned; does not wait for it."""
        self._executor.submit(self._source.close)
        self._executor.shutdown(wait=False)
