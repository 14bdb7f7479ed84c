"""Video sources opened with OpenCV: a camera index, a file, or a stream URL.

Shared by WatchSource (the server reads the source) and the `stream` client
(the client reads it and pushes frames). Opening and reading block, so async
callers run them in a thread.

The server opens sources for clients it does not know, so it gives them
`SourceLimits`: bounded text, network URLs and regular files only, OpenCV's
open and read timeouts, and a frame size limit. OpenCV's FFmpeg backend opens
one source at a time in the whole process (a lock held through
avformat_open_input and avformat_find_stream_info; reading does not take it),
so one open that hangs holds up every other: `SourceOpener` bounds how long
and how many.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import stat
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from actionstream.service.credentials import hide_credentials
from actionstream.service.sources.allowlist import (
    NETWORK_SCHEMES,
    NoSuchFile,
    NotAllowed,
    SourceAllowlist,
    has_control_characters,
    is_camera_index,
)
from actionstream.service.text import printable

# Longer sources are refused unread: no path or camera URL needs more, and a source is
# quoted (cut short) in statuses and logs, where the whole of a long one would not fit.
MAX_SOURCE_CHARS = 4096
# Camera indexes, a backend's offset included (CAP_V4L2 + 1 = 201), are below this; a
# longer run of digits is no camera, and int() or OpenCV would raise on it.
_CAMERA_INDEX_LIMIT = 10_000


class SourceError(Exception):
    """A source that cannot be read, with the reason in words."""


class SourceNotFound(SourceError):
    """Nothing is there: no such file, camera or reachable URL."""


class SourceTimeout(SourceError):
    """The source did not open in time, its wait for its turn included."""


class SourceNotAllowed(SourceError):
    """The server's source allowlist does not name it."""


class SourceBusy(SourceError):
    """The server has as many threads busy with sources as it allows; retry later."""


@dataclass(frozen=True, slots=True)
class SourceLimits:
    """What the server allows a source it opens for a client; the `stream` client sets none."""

    open_timeout_s: float  # OpenCV's open timeout; a call waiting its turn gets twice this
    read_timeout_s: float  # OpenCV's wait for each frame of a file or stream
    max_pixels: int  # the largest frame, width * height
    # FFmpeg demuxers it may use (its format_whitelist); None: any
    formats: str | None = None


# The demuxers a server under a source allowlist uses: video containers and camera streams.
# Not those that open further sources as a file or stream tells them (hls, dash, concat,
# image2's numbered-file patterns, sdp, tee): each goes where the allowlist never looked.
# A tester reached files outside the allowed folders through hls over an allowed udp
# port, and another path on an allowed host through image2's `%d` in a URL.
CONTAINER_FORMATS = "avi,mov,matroska,mpegts,flv,mjpeg,mpjpeg,rtsp,rtp,h264,hevc,mpeg,asf,ogg"
# OpenCV passes this variable's "key;value|key;value" to FFmpeg at every open.
_FFMPEG_OPTIONS = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_options_lock = threading.Lock()


def is_url(source: str) -> bool:
    return "://" in source


def check_text(source: str) -> None:
    """Refuses, on its text alone, a source the server will not open for a client."""
    if not source.strip():
        what = "empty" if not source else "blank"
        raise SourceError(f"source is {what}; give a camera index, a video file or a URL")
    if len(source) > MAX_SOURCE_CHARS:
        raise SourceError(
            f"source is {len(source)} characters long; the server takes at most {MAX_SOURCE_CHARS}"
        )
    if has_control_characters(source):
        raise SourceError(f"{_shown(source)} holds a control character")
    if is_url(source):
        scheme = source.split("://", 1)[0].lower()
        if scheme not in NETWORK_SCHEMES:
            raise SourceError(
                f"cannot open {_shown(source)}: the server opens network streams "
                f"({', '.join(sorted(NETWORK_SCHEMES))}) by URL and local files by path"
            )


class VideoSource:
    """An open cv2.VideoCapture; `source` is "0" (camera index), a path, or a URL."""

    def __init__(
        self, source: str, limits: SourceLimits | None = None, shown: str | None = None
    ) -> None:
        """Opens the source now; raises SourceError (or SourceNotFound) if it cannot.
        `shown` is what messages call it (the client's own words for a resolved path)."""
        if not source.strip():
            raise SourceError("source is empty; give a camera index, a video file or a URL")
        if limits is not None:
            check_text(source)
        self.source = source if shown is None else shown
        self._max_pixels = limits.max_pixels if limits is not None else None
        camera = is_camera_index(source)
        if camera:
            self._capture = _open_camera(source, limits)
        else:
            self._capture = _open_named(source, limits, self.source)
        if self._max_pixels is not None:
            self._check_reported_size()
        # A camera, or a stream with no end in sight; a local file is never live, even one
        # that reports no frame count (raw MJPEG or H.264). This and the frame rate are
        # read once, here: asking OpenCV later could meet a read in flight on another thread.
        self.camera = camera  # a camera index
        self.live = camera or (is_url(source) and self.frame_count is None)
        self.opened_fps = self.fps

    @property
    def fps(self) -> float | None:
        """The source's frame rate, if it reports a usable one (cameras often do not)."""
        fps = float(self._capture.get(cv2.CAP_PROP_FPS))
        return fps if math.isfinite(fps) and fps > 0 else None

    @property
    def frame_count(self) -> int | None:
        """How many frames a file says it has; None for cameras and live URLs."""
        count = self._capture.get(cv2.CAP_PROP_FRAME_COUNT)
        return int(count) if math.isfinite(count) and count > 0 else None

    def read(self) -> np.ndarray | None:
        """The next frame as uint8 (H, W, 3) BGR, or None when the source has ended."""
        ok, frame = self._capture.read()
        if not ok:
            return None
        # For a backend that hands out frames at the size they come in: OpenCV's FFmpeg
        # backend scales each to the size the stream had when it opened.
        if self._max_pixels is not None:
            self._check_pixels(frame.shape[1], frame.shape[0], "sent a frame of")
        return frame

    def read_positioned(self) -> tuple[np.ndarray, float] | None:
        """Like read, with the position OpenCV gives the frame (ms along a file)."""
        frame = self.read()
        return None if frame is None else (frame, float(self._capture.get(cv2.CAP_PROP_POS_MSEC)))

    def close(self) -> None:
        self._capture.release()

    def _check_reported_size(self) -> None:
        # Before any frame is decoded: the size FFmpeg read from the container or stream
        # header (0 when it does not know; each frame is checked as it is read anyway).
        width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        try:
            self._check_pixels(width, height, "has frames of")
        except SourceError:
            self.close()
            raise

    def _check_pixels(self, width: int, height: int, what: str) -> None:
        if self._max_pixels is not None and width * height > self._max_pixels:
            raise SourceError(
                f"{_shown(self.source)} {what} {width}x{height} = "
                f"{width * height} pixels; the server accepts at most {self._max_pixels} "
                "(max_frame_pixels)"
            )


def _quote(source: str, limits: SourceLimits | None) -> str:
    """The source as an error quotes it: the server's as _shown (its errors reach
    statuses and logs), the `stream` client's own as its user gave it."""
    return _shown(source) if limits is not None else source


def _shown(source: str) -> str:
    """A source as the server's errors and logs show it: its secrets hidden, cut short
    and escaped."""
    return printable(hide_credentials(source))


def _open_camera(source: str, limits: SourceLimits | None) -> cv2.VideoCapture:
    quoted = _quote(source, limits)
    digits = source.lstrip("0") or "0"
    # Checked as text: int() refuses over 4300 digits, and OpenCV an index over a C long.
    if len(digits) > len(str(_CAMERA_INDEX_LIMIT - 1)):
        raise SourceError(f"{quoted} is no camera index (they are below {_CAMERA_INDEX_LIMIT})")
    capture = cv2.VideoCapture(int(digits))
    if not capture.isOpened():
        raise SourceNotFound(f"camera {quoted} could not be opened")
    return capture


def _open_named(source: str, limits: SourceLimits | None, shown: str) -> cv2.VideoCapture:
    """Opens a file or URL; under limits, FFmpeg with timeouts, and regular files only."""
    quoted = _quote(shown, limits)
    if not is_url(source):
        _check_file(source, limits, quoted)
    if limits is None:
        capture = cv2.VideoCapture(source)
    else:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(limits.open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(limits.read_timeout_s * 1000)),
        ]
        # FFmpeg alone: it reads every file and URL the server takes, and takes timeouts.
        with _ffmpeg_options(limits.formats):
            capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
    if not capture.isOpened():
        if is_url(source) and limits is not None:
            raise SourceNotFound(
                f"could not open stream {quoted}: refused, not a video, or no answer "
                f"within {limits.open_timeout_s:g} s"
            )
        if is_url(source):
            raise SourceNotFound(f"could not open stream {quoted}")
        raise SourceError(f"OpenCV cannot read {quoted} as a video")
    return capture


@contextlib.contextmanager
def _ffmpeg_options(formats: str | None) -> Iterator[None]:
    """FFmpeg's format_whitelist (and RTSP over TCP) for the opens inside, beside any
    options of the operator's own in the variable. OpenCV reads the variable as it
    opens, and opens one source at a time anyway (FFmpeg's lock), so opens taking turns
    here lose little."""
    if formats is None:
        yield
        return
    with _options_lock:
        before = os.environ.get(_FFMPEG_OPTIONS)
        options = [p for p in (before or "").split("|") if p]
        keys = {p.split(";", 1)[0] for p in options}
        options = [p for p in options if not p.startswith("format_whitelist;")]
        # OpenCV asks for RTSP over TCP only while the variable is unset; set, FFmpeg's
        # own default tries UDP first, and then takes RTP from any sender, and sends to
        # whatever ports and host a listed server's SETUP answer names (a tester's did).
        if "rtsp_transport" not in keys:
            options.append("rtsp_transport;tcp")
        os.environ[_FFMPEG_OPTIONS] = "|".join([*options, f"format_whitelist;{formats}"])
        try:
            yield
        finally:
            if before is None:
                del os.environ[_FFMPEG_OPTIONS]
            else:
                os.environ[_FFMPEG_OPTIONS] = before


def _check_file(path: str, limits: SourceLimits | None, quoted: str) -> None:
    """Refuses a path that names nothing, or (for the server) no regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceNotFound(f"no such video file: {quoted}") from None
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:  # a part over the file system's limit: none there
            raise SourceNotFound(f"no such video file: {quoted}") from None
        raise SourceError(f"cannot open {quoted}: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte
        raise SourceError(f"cannot open {quoted}: {e}") from None
    # A FIFO with no writer, or a device, blocks OpenCV's open in the kernel, holding
    # FFmpeg's process-wide open lock, for as long as it likes.
    if limits is not None and not stat.S_ISREG(mode):
        raise SourceError(f"{quoted} is not a regular file")


class AsyncVideoSource:
    """A VideoSource for asyncio code, its blocking calls on one thread of its own.

    A cancelled RPC stops awaiting a read while OpenCV may still be inside it;
    releasing the capture from another thread at that moment is undefined
    behaviour, so the release is queued behind the read on the same thread.
    """

    def __init__(
        self,
        source: VideoSource,
        executor: ThreadPoolExecutor,
        on_closed: Callable[[], None] = lambda: None,
    ) -> None:
        self._source = source
        self._executor = executor
        self._on_closed = on_closed

    @property
    def live(self) -> bool:
        """A camera or live stream (no frame count): its end is a loss, not a finish."""
        return self._source.live

    @property
    def fps(self) -> float | None:
        """The frame rate the source reported when it opened, if a usable one."""
        return self._source.opened_fps

    async def read(self) -> tuple[np.ndarray, float] | None:
        """The next frame and its position in ms (along a file; see VideoSource), or None
        when the source has ended."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self._source.read_positioned
        )

    def close(self) -> None:
        """Releases the source once any read in flight has returned; does not wait for it."""
        self._executor.submit(self._release)
        self._executor.shutdown(wait=False)

    def _release(self) -> None:
        try:
            self._source.close()
        finally:
            self._on_closed()


class SourceOpener:
    """Opens sources for a server's WatchSource calls, within bounds a caller cannot stretch.

    Network opens take turns on one thread of their own, so at most one of them holds
    FFmpeg's open lock ahead of a file's open, and one whose call ended while it waited
    never starts. Each gives up after `open_timeout_s` (OpenCV's clock, from when it
    starts); a call gives up after twice that (its own clock, waiting included), which
    is time for one open ahead of it and its own, and catches an open that overruns
    OpenCV's clock (a slow DNS lookup does). A thread inside OpenCV cannot be stopped:
    after its call is cancelled or gives up, an open or read in flight runs on to its
    timeout. Each source holds one thread until then, and `max_threads` bounds those;
    calls beyond get SourceBusy.
    """

    def __init__(
        self, limits: SourceLimits, max_threads: int, allowlist: SourceAllowlist | None = None
    ) -> None:
        self._limits = limits
        self._allowlist = allowlist
        self._max_threads = max_threads
        self._lock = threading.Lock()
        self._threads = 0  # sources' threads not yet done, their calls' or left over
        self._network = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-open")

    async def open(self, source: str) -> AsyncVideoSource:
        """Opens `source` under the limits; raises SourceError or one of its kinds."""
        check_text(source)
        self._hold_thread()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source")
        opener = self._network if is_url(source) else executor
        # On the source's thread: the allowlist resolves a path on the file system, which
        # on a hung network mount would stall every stream of the event loop.
        future = opener.submit(self._admit_and_open, source)
        deadline_s = 2 * self._limits.open_timeout_s
        try:
            async with asyncio.timeout(deadline_s):
                opened = await asyncio.wrap_future(future)
        except BaseException as e:
            self._abandon(future, executor)
            if isinstance(e, TimeoutError):
                raise SourceTimeout(
                    f"{_shown(source)} did not open within {deadline_s:g} s (opens of "
                    "URLs take turns, and one that hangs holds up all others)"
                ) from None
            raise
        return AsyncVideoSource(opened, executor, self._free_thread)

    def _admit_and_open(self, source: str) -> VideoSource:
        if self._allowlist is None:
            return VideoSource(source, self._limits)
        try:
            # A file is opened as the allowlist checked it; messages name it as the
            # client did.
            with self._allowlist.opened(source) as admitted:
                return VideoSource(admitted, self._limits, shown=source)
        except NotAllowed as e:
            raise SourceNotAllowed(f"cannot open {_shown(source)}: {e}") from None
        except NoSuchFile:
            raise SourceNotFound(f"no such video file: {_shown(source)}") from None

    def close(self) -> None:
        """Drops network opens still waiting; one in flight runs on to its timeout."""
        self._network.shutdown(wait=False, cancel_futures=True)

    @property
    def busy(self) -> int:
        """Threads still busy with sources: in OpenCV, or releasing what they opened."""
        with self._lock:
            return self._threads

    def _hold_thread(self) -> None:
        with self._lock:
            if self._threads >= self._max_threads:
                raise SourceBusy(
                    f"the server has {self._threads} threads busy with sources, its limit "
                    "(opens and reads, counting those that run on after their call ended, "
                    "until their timeout); retry later"
                )
            self._threads += 1

    def _free_thread(self) -> None:
        with self._lock:
            self._threads -= 1

    def _abandon(self, future: Future[VideoSource], executor: ThreadPoolExecutor) -> None:
        """Lets go of an open whose call has gone: not started, it never will; started,
        whatever it opens is released by the thread it runs on, which is then let go."""
        future.cancel()
        future.add_done_callback(_release_late)
        executor.submit(self._free_thread)  # after the open, when it runs on this thread
        executor.shutdown(wait=False)


def _release_late(future: Future[VideoSource]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
