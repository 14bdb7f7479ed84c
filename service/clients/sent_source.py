"""The source `stream` sends: opened off the main thread, read and encoded under one lock.

OpenCV calls on a camera or URL can block for its 30-s timeout; these two
keep Ctrl-C prompt and the process from aborting under a thread still inside
OpenCV (see SentSource).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import cv2
import numpy as np

from actionstream.decoding import NativeLines, cut_short, describe_shortfall, held_back
from actionstream.resampling import FileClock
from actionstream.service.clients.stream_summary import StreamError
from actionstream.service.credentials import hide_credentials
from actionstream.service.sources.video_source import SourceError, VideoSource, is_url

# A read that gave up after this long found the source stalled, not ended: OpenCV waits
# 30 s for a network source's next frame.
STALLED_S = 20.0


class SentSource:
    """The source, read and encoded on gRPC's request thread, closed on the caller's.

    gRPC pulls the requests on a daemon thread of its own that nothing joins, and
    drops the request generator there once the call is over. OpenCV lets go of the
    GIL inside read, encode and release; a thread still inside one when the
    interpreter exits is ended as it takes the GIL back, by a forced unwind through
    OpenCV's C++ frames: std::terminate, "terminate called without an active
    exception", SIGABRT. So every OpenCV call on the source holds this lock, and
    `close` (the caller's thread, before stream_source returns or raises) waits out
    the one in flight, releases the capture, and refuses any later one.
    """

    def __init__(self, source: VideoSource) -> None:
        self._source = source
        self.fps = source.opened_fps
        self.frame_count = source.frame_count
        self.live = source.live  # a camera or live stream (no frame count)
        self.camera = source.camera  # a camera index: its end is a loss
        # A file's frames are timed by its own timeline, as training and the server's
        # WatchSource time them; a camera's or live stream's by when they are read. (A
        # file that reports no frame rate, rare, is counted at FFmpeg's own 25 fps here,
        # at the model's rate there: this client does not always ask for it.)
        self._clock = None if source.live else FileClock(self.fps or 25.0)
        self._lock = threading.Lock()
        self._closed = False
        self._left = False  # close gave up waiting: the call in flight releases the source
        # Frames read so far, numbered as read under the lock: the request generators of an
        # ended call and of the next can both be reading.
        self.frames_read = 0
        self.last_s = 0.0  # a file's time at the last frame read
        self.ran_out = False  # the source ended (not the feed closed)
        self.stalled = False  # it ended when a read gave up waiting (OpenCV's 30 s)
        self.let_go = 0  # of the frames read, those let go while the server was away

    def read(self) -> tuple[int, np.ndarray, float | None] | None:
        """The next frame's number (1, 2, ... over the whole source), the frame and, for a
        file, its time into the file in seconds; None when the source has ended or the
        feed is closed."""
        with self._lock:
            return self._read()

    def _read(self) -> tuple[int, np.ndarray, float | None] | None:
        # Under the lock.
        if self._closed:
            return None
        asked = time.monotonic()
        read = self._source.read_positioned()
        self._release_if_left()
        if read is None:
            self.ran_out = True
            self.stalled = time.monotonic() - asked >= STALLED_S
            return None
        self.frames_read += 1
        number = self.frames_read
        image, position_ms = read
        file_s = None if self._clock is None else self._clock.next(position_ms)
        if file_s is not None:
            self.last_s = file_s
        return number, image, file_s

    def let_go_until(self, resumed: threading.Event) -> None:
        """Reads and lets go of frames until `resumed` is set, the source ends or the feed
        is closed: a live source unread while no call takes its frames keeps them in its
        buffers, and a new call then got them in a burst, seconds old, read as new. Run
        on a thread of its own (a read of a stalled source lasts up to 30 s)."""
        while True:
            with self._lock:
                # Asked again under the lock: a call may have read since.
                if resumed.is_set() or self._read() is None:
                    return
                self.let_go += 1

    def encode(self, image: np.ndarray, quality: int, sequence: int) -> bytes | None:
        """Frame `sequence` as JPEG; None when the feed is closed."""
        with self._lock:
            if self._closed:
                return None
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            self._release_if_left()
        if not ok:
            raise StreamError(f"frame {sequence}: OpenCV could not JPEG-encode it")
        return jpeg.tobytes()

    def close(self, wait_s: float | None = None) -> bool:
        """Waits for a read or encode in flight (OpenCV's own timeouts bound a stuck
        camera or URL), then releases the source; again is a no-op. With `wait_s`, gives
        up after that long and returns False: the call in flight releases the source
        when it returns, and the process must not exit normally before then. Once one
        close has given up, a later one does not wait either."""
        if self._left:
            return self._closed
        if not self._lock.acquire(timeout=-1 if wait_s is None else wait_s):
            self._left = True
            # The call may have returned between the wait and the flag: then it is ours.
            if not self._lock.acquire(blocking=False):
                return False
        try:
            self._release_if_left(always=True)
        finally:
            self._lock.release()
        return True

    def _release_if_left(self, always: bool = False) -> None:
        # Under the lock.
        if (always or self._left) and not self._closed:
            self._closed = True
            self._source.close()


def open_source(name: str) -> VideoSource | None:
    """The opened source; None after Ctrl-C, which a URL's open would hold off for up to
    OpenCV's 30-s timeout were it on this thread. Raises StreamError if it cannot open."""
    opened: Future[VideoSource] = Future()
    lock = threading.Lock()  # whoever comes second closes a source opened too late
    abandoned = False

    # A local file opens at once, so FFmpeg's lines about it ("moov atom not found") can
    # be held back from the terminal and quoted in the error; a URL's open may last 30 s,
    # and stderr held that long would swallow what this process says meanwhile (Ctrl-C).
    local = not is_url(name) and Path(name).is_file()
    if local and Path(name).stat().st_size == 0:
        raise StreamError(f"cannot open source: {name} is empty (0 bytes)")
    said = NativeLines()

    def open_source() -> None:
        try:
            with held_back() if local else contextlib.nullcontext(said) as heard:
                source = VideoSource(name)
        except BaseException as e:
            said.lines = heard.lines
            opened.set_exception(e)
            return
        with lock:
            opened.set_result(source)
            if abandoned:
                source.close()

    threading.Thread(target=open_source, name="source-open", daemon=True).start()
    try:
        return opened.result()
    except SourceError as e:
        decoder = f"; {said.summary()}" if said.lines else ""
        raise StreamError(f"cannot open source: {e}{decoder}") from None
    except KeyboardInterrupt:
        with lock:
            abandoned = True
            if opened.done() and opened.exception() is None:
                opened.result().close()
        return None


def warn_if_damaged(source: str, feed: SentSource, said: NativeLines) -> None:
    """Warns when a local file's frames ended clearly before the count its container
    declares (a copy or download cut short), or the decoder complained while reading
    it, as training does (actionstream/decoding.py). `said`: FFmpeg's lines while the
    file was read, kept from the terminal (ffmpeg_lines_kept)."""
    path = Path(source)
    if is_url(source) or not path.is_file():
        if said.lines:  # a live stream's damaged frames, told once at the end
            name = hide_credentials(source)
            warning = f"{said.summary()} while reading it; streamed the frames decoded"
            print(f"warning: {name}: {warning}", file=sys.stderr, flush=True)
        return
    detail = f"; {said.summary()}" if said.lines else ""
    count, fps = feed.frame_count, feed.fps
    if (
        feed.ran_out
        and count is not None
        and fps is not None
        and (cut_short(path, count, feed.frames_read, fps, feed.last_s, said))
    ):
        shortfall = describe_shortfall(count, feed.frames_read, fps, feed.last_s)
        warning = f"cut short or damaged: {shortfall}{detail}; streamed the frames it has"
    elif said.lines:
        warning = f"{said.summary()} while reading it; streamed the frames decoded"
    else:
        return
    print(f"warning: {source}: {warning}", file=sys.stderr, flush=True)
