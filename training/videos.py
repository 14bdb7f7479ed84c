"""Users' videos as a data set of labelled clips: found (clip_sources.py), decoded
(clip_decode.py) or read back from the frame cache (frame_cache.py), and checked to
train a classifier; split into training and held-out clips by splits.py.

A clip that cannot be used (unreadable, too short, a copy of another under a new name)
is reported by name and skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from actionstream.training.clips import CacheError, Clip, ClipRef, DatasetError, shares_frames
from actionstream.training.data import LabelledClip
from actionstream.training.frame_cache import ClipCache

# Shorter clips are skipped, in training and in evaluation alike: a model that sees a
# frame's difference from the previous one has nothing to go on at a clip's first frame.
MIN_CLIP_FRAMES = 2


@dataclass(frozen=True)
class VideoDataset:
    """Usable labelled clips, their label set, and what was skipped and why."""

    labels: tuple[str, ...]
    clips: tuple[Clip, ...]
    targets: tuple[int, ...]  # label index of each clip
    skipped: tuple[str, ...]  # one line per clip that could not be used
    found: tuple[Path, ...] = ()  # every video named, usable or not

    def per_class(self) -> dict[str, int]:
        return {label: self.targets.count(k) for k, label in enumerate(self.labels)}

    def labelled(self) -> list[LabelledClip]:
        return [LabelledClip(c.frames, t) for c, t in zip(self.clips, self.targets, strict=True)]


def load_dataset(
    refs: Sequence[ClipRef],
    cache: ClipCache,
    min_frames: int,
    report: Callable[[str], None] = print,
    known: Sequence[str] | None = None,
) -> VideoDataset:
    """Decodes (or reads back) every clip; refuses a data set that cannot train a classifier.

    Clips shorter than `min_frames` are skipped like unreadable ones, and so is a
    copy: the same span, under the same label, of a file with the same bytes as an
    earlier one under another name (kept, it would weigh double and could land on
    both sides of the split). Each skip goes to `report`. Any other clip that shares
    frames with a copy's is refused, as spans of one file that share frames are:
    its frames would carry two labels, or count twice. Raises
    DatasetError when fewer than two labels, or a label with no usable clip, remain.
    With `known` (a trained model's labels, for evaluation), targets index those, a
    label outside them is an error, and a label may have no clip.
    """
    labels = tuple(sorted({r.label for r in refs})) if known is None else tuple(known)
    unknown = sorted({r.label for r in refs} - set(labels))
    if unknown:
        raise DatasetError(f"label(s) {', '.join(unknown)} are not the model's {list(labels)}")
    clips, targets, skipped = [], [], []
    kept_of: dict[str, list[ClipRef]] = {}  # by the file's digest: the clips kept so far
    for ref in refs:
        try:
            clip = cache.load(ref)
        except CacheError:
            raise
        except DatasetError as e:
            skipped.append(str(e))
            report(f"skipped {e}")
            continue
        if len(clip) < min_frames:
            _tell_notes(clip, report)
            line = (
                f"{ref.describe()}: {len(clip)} frame{'s' * (len(clip) != 1)} at "
                f"{cache.prep.fps:g} fps, need {min_frames}"
            )
            skipped.append(line)
            report(f"skipped {line}")
            continue
        original = _copied(ref, kept_of.setdefault(clip.digest, []))
        if original is not None:
            line = f"{ref.describe()}: a copy of {original.describe()} (the same bytes)"
            skipped.append(line)
            report(f"skipped {line}")
            continue
        _tell_notes(clip, report)
        kept_of[clip.digest].append(ref)
        clips.append(clip)
        targets.append(labels.index(ref.label))
    found = tuple(dict.fromkeys(r.path for r in refs))
    if known is not None:
        if not clips:
            raise DatasetError(f"no usable video ({len(skipped)} skipped)")
        return VideoDataset(labels, tuple(clips), tuple(targets), tuple(skipped), found)
    if len(labels) < 2:
        raise DatasetError(f"need at least two labels to tell apart, found {list(labels)}")
    empty = [label for k, label in enumerate(labels) if k not in targets]
    if empty:
        raise DatasetError(
            f"no usable video for label(s) {', '.join(empty)} ({len(skipped)} video(s) skipped)"
        )
    return VideoDataset(labels, tuple(clips), tuple(targets), tuple(skipped), found)


def _tell_notes(clip: Clip, report: Callable[[str], None]) -> None:
    """A warning line for each of `clip`'s notes, naming it (a copy's are its original's)."""
    for note in clip.notes:
        report(f"warning: {clip.ref.describe()}: {note}")


def _copied(ref: ClipRef, kept: list[ClipRef]) -> ClipRef | None:
    """The clip in `kept` (clips of files with the same bytes) that `ref` repeats under
    another name: the same span and label. Raises DatasetError when `ref` shares frames
    with any other of them, whatever the order they come in. (Within one file, the
    manifest's own check has refused spans that share frames already.)"""
    same = None
    for other in kept:
        if other.path == ref.path or not shares_frames(other, ref):
            continue
        if other.label != ref.label:
            raise DatasetError(
                f"{ref.describe()}, labelled {ref.label}, has the same bytes as "
                f"{other.describe()}, labelled {other.label}, and shares its frames: "
                "delete or move the copy whose label is wrong"
            )
        if (other.start_s, other.end_s) != (ref.start_s, ref.end_s):
            raise DatasetError(
                f"{ref.describe()} has the same bytes as {other.describe()} and shares "
                "some of its frames: spans of one video, under any name, must not share "
                "frames (give the copy's span as the original's, or drop it)"
            )
        same = other
    return same
