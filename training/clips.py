"""What a labelled clip is: where it comes from (a file, optionally a span of it), what
it becomes once decoded, and the errors a data set is refused with."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class DatasetError(Exception):
    """A data set that cannot be trained on, with the reason in words."""


class CacheError(DatasetError):
    """The frame cache cannot be made or written: no video can be used, so it is not
    one video's skip but the whole run's error."""


@dataclass(frozen=True)
class ClipRef:
    """Where a labelled clip comes from: a file, and optionally a span of it in seconds."""

    path: Path
    label: str
    start_s: float = 0.0
    end_s: float | None = None  # None: to the end of the file
    # Where a manifest lists it, `manifest.csv:LINE`, for what is said of its span; not
    # part of what the clip is (a row repeated on another line is the same clip).
    row: str = field(default="", compare=False)

    def describe(self) -> str:
        if self.start_s == 0.0 and self.end_s is None:
            return str(self.path)
        end = "end" if self.end_s is None else f"{self.end_s:g}s"
        return f"{self.path} [{self.start_s:g}s-{end}]"


@dataclass(frozen=True)
class Clip:
    """A decoded clip: frames (T, H, W, 3) uint8 BGR at the model's fps, memory-mapped."""

    ref: ClipRef
    frames: np.ndarray
    digest: str  # SHA-256 of the file's bytes: one video under two names is one video
    # What decoding it had to say (cut short, damaged), a line each without the file's
    # name: kept with the cache entry, so that every run that uses the clip says it, not
    # only the one that decoded it, under the name the clip has in that run.
    notes: tuple[str, ...] = ()
    # The video's own frame rate (its container's), None where it is not known: a model
    # at a higher rate steps its every frame, each farther apart than it assumes.
    source_fps: float | None = None

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class Preprocessing:
    """What every clip becomes: frames of `size`×`size` at `fps`."""

    size: int
    fps: float


def span_end(ref: ClipRef) -> float:
    """Where `ref` ends, in seconds: a whole file's span at infinity, so spans compare alike."""
    return math.inf if ref.end_s is None else ref.end_s


def shares_frames(a: ClipRef, b: ClipRef) -> bool:
    """Whether the spans of `a` and `b` overlap, as if both were of one file."""
    return a.start_s < span_end(b) and b.start_s < span_end(a)
