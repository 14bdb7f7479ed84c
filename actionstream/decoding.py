"""What decoding a video file says besides its frames: training, `evaluate` and `stream`.

FFmpeg, under OpenCV, writes what it meets in a damaged file ("overread 8",
"File ended prematurely", "moov atom not found") straight to file descriptor
2, raw, a line each time. `held_back()` sends fd 2 to a temporary file for a
decode and hands the lines back, so that the caller says in one line of its
own which file it was and what it means. A file that was cut short (a copy or
download that stopped) decodes without an error: its frames simply end early,
and `cut_short()` tells when they ended clearly before the count its container
declares. Pure Python: the service's clients and training both import it.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

# A file is cut short when it lacks at least this many frames and this share of them:
# decoders may drop a frame or two at the end (an edit list, a last B-frame), and an
# AVI with a longer audio track declared one frame more than it holds here.
SHORT_FRAMES = 2
SHORT_FRACTION = 0.02
# Of what native code wrote during one decode, the bytes read back.
_HELD_BYTES = 64 * 1024
# "[mjpeg @ 0x55d0c3a1c2c0] overread 8": the decoder's address says nothing to a user.
_FFMPEG_PREFIX = re.compile(r"^\[[^\]@]+ @ 0x[0-9a-fA-F]+\]\s*")
_FFMPEG_LINE = re.compile(_FFMPEG_PREFIX.pattern.encode())


@dataclass
class NativeLines:
    """The lines native code wrote to stderr during a `held_back()` block, once it is over."""

    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """The first line and how many others came: '' when none did."""
        if not self.lines:
            return ""
        more = len(self.lines) - 1
        others = f" and {more} more line{'s' * (more != 1)}" if more else ""
        return f'the decoder said "{self.lines[0]}"{others}'


@contextlib.contextmanager
def held_back() -> Iterator[NativeLines]:
    """Within the block, whatever native code writes to fd 2 goes to a temporary file;
    after it, the lines are in the NativeLines yielded (without FFmpeg's address prefix,
    each once). fd 2 is the process's: Python's own stderr written during the block,
    by any thread, is held back too, so keep the block to the decode. Where no temporary
    file can be made, the lines go where they always did."""
    said = NativeLines()
    sys.stderr.flush()
    with contextlib.ExitStack() as stack:
        sink: IO[bytes] | None = None
        saved = -1  # the real fd 2, while the block runs
        with contextlib.suppress(OSError):
            sink = stack.enter_context(tempfile.TemporaryFile())
            saved = os.dup(2)
            stack.callback(os.close, saved)
        if sink is None or saved < 0:
            yield said
            return
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            said.lines = _lines(sink.read(_HELD_BYTES))


@contextlib.contextmanager
def ffmpeg_lines_kept() -> Iterator[NativeLines]:
    """Within the block, FFmpeg's lines on fd 2 (those it prefixes with its decoder,
    "[mjpeg @ 0x55d0c3a1c2c0] overread 8") are kept, and every other line written there
    goes on to the real stderr as it comes; after it, the kept lines are in the
    NativeLines yielded. For a whole run that prints as it goes (`stream` reading a
    file), where held_back() would hold the process's own lines back too. Where no pipe
    can be made, the lines go where they always did."""
    said = NativeLines()
    sys.stderr.flush()
    try:
        read_end, write_end = os.pipe()
    except OSError:
        yield said
        return
    try:
        real = os.dup(2)
    except OSError:
        os.close(read_end)
        os.close(write_end)
        yield said
        return
    kept: list[bytes] = []
    relay = threading.Thread(
        target=_relay, args=(read_end, real, kept), name="ffmpeg-lines", daemon=True
    )
    relay.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    # A crash inside FFmpeg would leave what is still in the pipe unread, its reader dying
    # with the process: Python's traceback of every thread goes to the real stderr instead.
    crash_file = os.fdopen(os.dup(real), "w")
    crashes_told = faulthandler.is_enabled()
    faulthandler.enable(file=crash_file, all_threads=True)
    try:
        yield said
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's last writer gone: the relay reads to its end and stops
        if crashes_told:  # to fd 2 again: sys.stderr may have no descriptor (pytest's)
            faulthandler.enable(file=2, all_threads=True)
        else:
            faulthandler.disable()
        crash_file.close()
        relay.join(timeout=1.0)
        if not relay.is_alive():  # else a thread of ours still writes to it, and may use it
            os.close(real)
        said.lines = _lines(b"\n".join(kept))


def _relay(read_end: int, real: int, kept: list[bytes]) -> None:
    """Reads the pipe to its end: FFmpeg's lines into `kept` (bounded), the rest on to
    `real` a line at a time (a last unfinished line once the pipe ends)."""
    held = 0
    pending = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                if _FFMPEG_LINE.match(line):
                    if held < _HELD_BYTES:
                        kept.append(line)
                        held += len(line)
                else:
                    _write_all(real, line + b"\n")
        _write_all(real, pending)
    os.close(read_end)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _lines(raw: bytes) -> list[str]:
    lines = []
    for line in raw.decode("utf-8", "backslashreplace").splitlines():
        text = _FFMPEG_PREFIX.sub("", line).strip()
        if text:
            lines.append(text if text.isprintable() else text.encode("unicode_escape").decode())
    return list(dict.fromkeys(lines))


def indexes_frames(path: Path) -> bool:
    """Whether `path`'s container lists every frame (MP4/MOV, AVI), so that the count
    OpenCV reports is exact. For the others (Matroska, WebM, MPEG, TS, WMV) it is an
    estimate from the file's duration, which an audio track longer than the video
    stretches (a 3-s video with 4 s of sound reads as 100 frames of 75), or from its
    size and bit rate (a cut transport stream counts what is left)."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except OSError:
        return False
    mp4 = head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot")
    return mp4 or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")


def cut_short(
    path: Path, declared: float, read: int, fps: float, last_s: float, said: NativeLines
) -> bool:
    """Whether a file whose frames ran out after `read` of them (the last at `last_s`
    seconds, at `fps`) ended clearly before the `declared` count its container reports.

    Where the container lists its frames (indexes_frames), the count falls short, and
    so does the time the frames reached: FFmpeg's AVI muxer lists a frame repeated to
    keep a constant rate (`ffmpeg -r 25` from a slower source) as an empty entry,
    which no decoder returns, so such a file holds fewer frames than it lists and
    still reaches its end. Elsewhere the count is the file's duration times a frame
    rate: the time the frames reached must fall as far short of that duration (a
    variable-rate file holds fewer frames than its nominal rate gives, over its whole
    length), and the decoder must have said something too (Matroska's "File ended
    prematurely"): an audio track longer than the video stretches the duration without
    any damage.
    """
    if not (declared > 0 and fps > 0) or declared == float("inf"):
        return False
    short_of_time = declared - (last_s * fps + 1)
    if indexes_frames(path):
        missing = min(declared - read, short_of_time)
    else:
        if not said.lines:
            return False
        missing = short_of_time
    return missing >= max(SHORT_FRAMES, SHORT_FRACTION * declared)


def describe_shortfall(declared: float, read: int, fps: float, last_s: float) -> str:
    """The counts, as a cut-short warning gives them."""
    return (
        f"its frames end at {last_s:.1f} s, after {read} of the {declared:.0f} its container "
        f"declares ({declared / fps:.1f} s at {fps:g} fps)"
    )
