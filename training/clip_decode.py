"""A clip's frames as the model takes them.

Each clip is decoded with OpenCV, resampled by timestamp to the model's frame rate by
the rule the server applies to a camera (a 30 fps video gives every third frame, a
5 fps one every frame, once) and resized to the model's input. A video OpenCV cannot
read, or that holds no frames in the asked span, raises DatasetError naming it. One
whose frames end clearly before the count its container declares (cut short) is used
for the frames it has, with a warning line; FFmpeg's own lines while decoding are held
back and told in the line that names the file.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from actionstream.decoding import cut_short, describe_shortfall, held_back
from actionstream.resampling import FileClock, Resampler
from actionstream.resizing import fit
from actionstream.training.clips import ClipRef, DatasetError, Preprocessing

# How far past a video's end a span may end, in seconds: an end rounded up, or given as
# the length a player shows, is the end of the video.
SPAN_END_SLACK_S = 1.0


def decode_clip(
    ref: ClipRef, prep: Preprocessing, warn: Callable[[str], None] | None = None
) -> np.ndarray:
    """(T, size, size, 3) uint8 BGR: `ref`'s span resampled to `prep.fps`; raises DatasetError.

    Resampling is by timestamp, with the server's own rule (actionstream/resampling.py):
    faster sources are thinned to the model's rate, slower ones give every frame once, so
    a model is trained and scored on the frames it would be served. A video that decodes
    with trouble (cut short, or damaged as the decoder says) is used, and `warn` is told
    what, in words that leave the file's name to the caller.
    """
    return decode_indexed(ref, prep, warn)[0]


def decode_indexed(
    ref: ClipRef, prep: Preprocessing, warn: Callable[[str], None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Like decode_clip, with the source frame index (0-based) each output frame shows."""
    taken = decode_counted(ref, prep, warn)
    return taken.frames, taken.sources


@dataclass(frozen=True)
class Counted:
    """A video's frames at the model's rate, and the source frames it gave in all."""

    frames: np.ndarray  # (T, H, W, 3)
    sources: np.ndarray  # (T,) the source frame index (0-based) each frame shows
    read: int  # source frames read: those past it are not in the file (or not in the span)
    fps: float  # the video's own frame rate, as its container gives it (else the model's)


def decode_counted(
    ref: ClipRef, prep: Preprocessing, warn: Callable[[str], None] | None = None
) -> Counted:
    """Like decode_indexed, with the number of source frames the video gave.

    FFmpeg's own lines about a damaged file are held back from the terminal
    (actionstream/decoding.py) and told in the line that names the file: a skip's
    reason, or the warning for a video that is used all the same. One whose frames end
    clearly before the count its container declares (a copy or download cut short) is
    used for the frames it has, with a warning; a span that starts after its last frame
    is refused.
    """
    with held_back() as said:
        decoded = _read(ref, prep)
    detail = f"; {said.summary()}" if said.lines else ""
    if decoded is None:
        raise DatasetError(f"{ref.describe()}: OpenCV cannot open it as a video{detail}")
    short = decoded.ran_out and cut_short(
        ref.path, decoded.declared, decoded.read, decoded.fps, decoded.last_s, said
    )
    shortfall = describe_shortfall(decoded.declared, decoded.read, decoded.fps, decoded.last_s)
    if not decoded.frames:
        if decoded.read and ref.start_s > decoded.last_s:
            why = f"; cut short or damaged: {shortfall}" if short else ""
            where = f"{ref.row}: " if ref.row else ""  # the manifest's line, as below
            raise DatasetError(
                f"{where}{ref.describe()}: the span starts after the video's last frame, at "
                f"{decoded.last_s:.1f} s{why}{detail}"
            )
        raise DatasetError(f"{ref.describe()}: no frames could be decoded{detail}")
    _refuse_span_past_the_end(ref, decoded, short)
    if warn is not None and short:
        warn(f"cut short or damaged: {shortfall}{detail}; using the frames it has")
    elif warn is not None and said.lines:
        warn(f"{said.summary()} while decoding it; using the frames decoded")
    # T x (H, W, 3) -> (T, H, W, 3), with each frame's source frame number (T,)
    return Counted(np.stack(decoded.frames), np.array(decoded.sources), decoded.read, decoded.fps)


def _refuse_span_past_the_end(ref: ClipRef, decoded: _Decoded, short: bool) -> None:
    """Refuses (as a span that starts after the last frame is) a span that ends more than
    SPAN_END_SLACK_S past the video's end, by its container's length when it declares
    more frames than it gave (cut short): a span in milliseconds by mistake, whose
    first row would otherwise label the whole video."""
    if ref.end_s is None or not decoded.ran_out:
        return
    length = decoded.last_s + 1 / decoded.fps
    if math.isfinite(decoded.declared) and decoded.declared > 0:
        length = max(length, decoded.declared / decoded.fps)
    if ref.end_s <= length + SPAN_END_SLACK_S:
        return
    where = f"{ref.row}: " if ref.row else ""
    why = "; it was cut short or damaged" if short else ""
    raise DatasetError(
        f"{where}{ref.describe()}: the span ends at {ref.end_s:g} s, past the video's end at "
        f"{length:.1f} s{why}; start_s and end_s are in seconds (milliseconds given?)"
    )


@dataclass
class _Decoded:
    """What reading a video gave: the frames taken (at the model's rate) and how the
    reading ended."""

    declared: float  # the frames its container says it has (an estimate for some)
    fps: float  # the container's frame rate (the model's where it gives none)
    frames: list[np.ndarray]
    sources: list[int]  # the source frame index of each frame taken
    read: int = 0  # source frames read
    last_s: float = 0.0  # the time of the last of them
    ran_out: bool = False  # the frames ended before the span did


def _read(ref: ClipRef, prep: Preprocessing) -> _Decoded | None:
    """`ref`'s frames at `prep`'s rate and size; None when OpenCV cannot open the file."""
    capture = cv2.VideoCapture(str(ref.path))
    if not capture.isOpened():
        return None
    source_fps = capture.get(cv2.CAP_PROP_FPS)
    if not (math.isfinite(source_fps) and source_fps > 0):
        source_fps = prep.fps
    decoded = _Decoded(capture.get(cv2.CAP_PROP_FRAME_COUNT), source_fps, [], [])
    resampler = Resampler(prep.fps)
    clock = FileClock(source_fps)
    try:
        for index in itertools.count():
            ok, image = capture.read()
            if not ok or image is None:
                decoded.ran_out = True
                break
            t = clock.next(capture.get(cv2.CAP_PROP_POS_MSEC))
            if ref.end_s is not None and t >= ref.end_s:
                break
            decoded.read, decoded.last_s = index + 1, t
            if t < ref.start_s - 1e-6 or not resampler.take(round(t * 1e6)):
                continue
            decoded.frames.append(fit(image, prep.size, prep.size))
            decoded.sources.append(index)
    finally:
        capture.release()
    return decoded
