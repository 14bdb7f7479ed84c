"""Users' videos as labelled clips: found on disk, decoded once, cached, read back lazily.

Two layouts:

- a folder of class folders, `DIR/<label>/...` (the UCF101/HMDB51 layout):
  each video anywhere under a label's folder, subfolders included, is one
  clip of that label;
- a CSV manifest with a header `path,label[,start_s,end_s]`: each row is a clip,
  a whole file or a labelled segment of a long untrimmed video; paths are
  relative to the CSV.

Each clip is decoded with OpenCV, resampled by timestamp to the model's frame
rate by the rule the server applies to a camera (a 30 fps video gives every
third frame, a 5 fps one every frame, once) and resized to the model's
input. The result is cached as a .npy file keyed by the video's bytes and
the preprocessing, so later epochs and later runs read it back
(memory-mapped, never all at once) instead of decoding again. A video OpenCV
cannot read, or that holds no frames in the asked span, is reported by name
and skipped; so are files in class folders that are not videos. One whose
frames end clearly before the count its container declares (cut short) is
used for the frames it has, with a warning line; FFmpeg's own lines while
decoding are held back and told in the line that names the file.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import hashlib
import itertools
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from actionstream.decoding import cut_short, describe_shortfall, held_back
from actionstream.resampling import FileClock, Resampler
from actionstream.resizing import fit
from actionstream.training.config import VIDEO_SUFFIXES
from actionstream.training.data import LabelledClip

# Shorter clips are skipped, in training and in evaluation alike: a model that sees a
# frame's difference from the previous one has nothing to go on at a clip's first frame.
MIN_CLIP_FRAMES = 2
# Bump when decoding or resampling changes, so old cache entries are not reused (4: entries
# keep decoding's notes, a cut-short video's warning among them).
_CACHE_VERSION = "4"


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

    def __len__(self) -> int:
        return len(self.frames)


def find_clips(data: Path, report: Callable[[str], None] = print) -> list[ClipRef]:
    """The clips a class-folder directory or a CSV manifest names; raises DatasetError."""
    if data.is_dir():
        return _refuse_near_labels(data, _from_folders(data, report))
    if data.is_file() and data.suffix.lower() == ".csv":
        return _refuse_near_labels(data, _from_manifest(data, report))
    if not data.exists():
        raise DatasetError(f"{data}: no such folder or manifest")
    raise DatasetError(f"{data}: expected a folder of class folders or a .csv manifest")


def _refuse_near_labels(data: Path, refs: list[ClipRef]) -> list[ClipRef]:
    """Refuses two labels that differ only by case or surrounding spaces (`Left` and
    `left`, a folder `left `): taken as they are, they would train as two classes of
    one action, each with half its videos."""
    seen: dict[str, str] = {}
    for ref in refs:
        first = seen.setdefault(ref.label.strip().casefold(), ref.label)
        if first != ref.label:
            raise DatasetError(
                f"{data}: labels {first!r} and {ref.label!r} differ only by case or "
                "surrounding spaces; spell them alike"
            )
    return refs


def _from_folders(root: Path, report: Callable[[str], None]) -> list[ClipRef]:
    refs: list[ClipRef] = []
    others: list[Path] = []
    empty: list[str] = []
    seen: set[Path] = set()
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(Path(p.name))):
        found = len(refs)
        for path in _files_under(folder, seen):
            if path.suffix.lower() in VIDEO_SUFFIXES:
                refs.append(ClipRef(path, folder.name))
            else:
                others.append(path.relative_to(root))
        if len(refs) == found:
            empty.append(folder.name)
    if others:
        # Named, not silently dropped: a video in a format OpenCV reads but this list
        # lacks can be given through a manifest, which takes any file.
        names = ", ".join(str(p) for p in others[:5]) + (", ..." if len(others) > 5 else "")
        report(
            f"ignored {len(others)} file(s) that are not videos by their name "
            f"({'|'.join(VIDEO_SUFFIXES)}): {names}"
        )
    if not refs:
        raise DatasetError(
            f"{root}: no videos found; expected {root}/<label>/*"
            f"{'|'.join(VIDEO_SUFFIXES)} (one folder per class)"
        )
    if empty:
        # Every folder is a label: one with no video would leave a model that lacks it.
        raise DatasetError(
            f"{root}: no video in class folder(s) {', '.join(empty)}; add its videos "
            f"({'|'.join(VIDEO_SUFFIXES)}) or move the folder out"
        )
    return refs


def _files_under(folder: Path, seen: set[Path]) -> Iterator[Path]:
    """Every file under `folder`, depth first in name order, through linked folders too
    (a user links a folder of videos in as readily as a file); a folder reached a
    second time by its real path (a link loop, or two links to one folder) is read
    once. A link to nothing is a file: it is named where it fails, not dropped."""
    real = folder.resolve()
    if real in seen:
        return
    seen.add(real)
    try:
        entries = sorted(p for p in folder.iterdir() if not _hidden(Path(p.name)))
    except OSError as e:
        raise DatasetError(f"{folder}: cannot read the folder ({e.strerror or e})") from None
    for entry in entries:
        if entry.is_dir():
            yield from _files_under(entry, seen)
        elif entry.is_file() or entry.is_symlink():
            yield entry


def _hidden(path: Path) -> bool:
    """Dot files and folders (.DS_Store, .git, a sync tool's .tmp) are never data. Given
    names below the data folder only: the folder's own path may hold `..` or a dot
    folder (~/.datasets/videos)."""
    return any(part.startswith(".") for part in path.parts)


# A manifest's columns: a misspelt span column left out would train on whole videos.
MANIFEST_COLUMNS = ("path", "label", "start_s", "end_s")


def _from_manifest(manifest: Path, report: Callable[[str], None]) -> list[ClipRef]:
    expected = "expected columns path,label[,start_s,end_s] with a header row"
    try:
        # utf-8-sig: a spreadsheet's "CSV UTF-8" starts with a byte-order mark.
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or ()]
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{manifest}: cannot read the manifest ({e})") from None
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        # A spreadsheet saved with a semicolon or tab: one column named "path;label;...".
        raise DatasetError(
            f"{manifest}:1: the manifest must be comma-separated (its header reads "
            f"{header[0]!r}); {expected}"
        )
    _check_columns(manifest, header, expected, report)
    refs: list[tuple[int, ClipRef]] = []
    for line, row in rows:
        # DictReader keeps fields past the header's under None; empty ones (a trailing
        # comma, as spreadsheets write) say nothing.
        if any(str(extra).strip() for extra in row.get(None) or ()):
            raise DatasetError(
                f"{manifest}:{line}: more fields than the header's {len(header)}; quote a "
                "path or label that holds a comma"
            )
        try:
            path, label = row["path"].strip(), row["label"].strip()
            start = float(row.get("start_s") or 0.0)
            end = float(row["end_s"]) if row.get("end_s") else None
        except (KeyError, AttributeError, ValueError):
            raise DatasetError(f"{manifest}:{line}: {expected}, and numbers in seconds") from None
        if not path or not label:
            raise DatasetError(f"{manifest}:{line}: path and label must not be empty")
        # float() reads "nan" and "inf", and NaN fails every comparison: a span of them
        # would cover the whole file and pass the overlap check.
        if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
            raise DatasetError(f"{manifest}:{line}: start_s and end_s must be finite numbers")
        if start < 0 or (end is not None and end <= start):
            raise DatasetError(f"{manifest}:{line}: need 0 <= start_s < end_s")
        refs.append((line, ClipRef((manifest.parent / path).resolve(), label, start, end)))
    if not refs:
        raise DatasetError(f"{manifest}: the manifest lists no clips")
    _refuse_overlaps(manifest, refs)
    for line, ref in refs:
        # Named on purpose, unlike a file a folder happens to hold: a typo, which
        # skipped would quietly train without the clip. (A link to nothing is left to
        # the loader, which says where it points.)
        if not os.path.lexists(ref.path):
            raise DatasetError(f"{manifest}:{line}: {ref.path}: no such file")
        if ref.path.is_dir():
            raise DatasetError(f"{manifest}:{line}: {ref.path} is a folder, not a video")
    return [ref for _, ref in refs]


def _check_columns(
    manifest: Path, header: list[str], expected: str, report: Callable[[str], None]
) -> None:
    """Refuses a header that names a column of ours misspelt (`lable`, `Path`), or spans
    under names of its own (`start`, `from_s`, `onset`, `duration`) where ours are
    missing: left alone, those would train on whole videos. Other columns (notes, a
    source URL) are named and left alone, as is an empty one (a trailing comma)."""
    unknown = [name for name in header if name and name not in MANIFEST_COLUMNS]
    missing = [ours for ours in MANIFEST_COLUMNS if ours not in header]
    problems = []
    for name in unknown:
        meant = _meant(name, missing)
        if meant is not None:
            problems.append(f"{name!r} (for {meant!r}?)")
        elif ("start_s" in missing or "end_s" in missing) and _looks_like_time(name):
            problems.append(f"{name!r} (spans go in start_s,end_s, in seconds)")
    if problems:
        raise DatasetError(
            f"{manifest}:1: unknown column(s) {', '.join(problems)} in the header; {expected}"
        )
    if "path" in missing or "label" in missing:
        raise DatasetError(f"{manifest}:1: no path,label in the header; {expected}")
    if unknown:
        report(f"{manifest}: ignored column(s) {', '.join(map(repr, unknown))}")


def _meant(name: str, ours: list[str]) -> str | None:
    """The column of `ours` that `name` misspells: the same in another case, cut short
    (`start`), or one or two letters off (`lable`)."""
    lower = name.lower()
    for column in ours:
        if lower == column or (len(lower) >= 3 and column.startswith(lower)):
            return column
    close = difflib.get_close_matches(lower, ours, n=1, cutoff=0.8)
    return close[0] if close else None


_TIME_WORDS = frozenset(
    {"start", "end", "begin", "stop", "from", "to", "onset", "offset", "duration", "length"}
    | {"t0", "t1", "time"}
)


def _looks_like_time(name: str) -> bool:
    """A column name that reads as a time or a span bound: `from_s`, `clip_end`, `t0`."""
    words = name.lower().replace("-", "_").split("_")
    return bool(_TIME_WORDS & set(words)) or words[-1] in ("s", "sec", "secs", "ms", "seconds")


def _refuse_overlaps(manifest: Path, refs: list[tuple[int, ClipRef]]) -> None:
    """Refuses two rows that share frames of one video: a repeated row would be trained
    and scored twice over, and overlapping spans give one frame two labels."""
    by_video: dict[Path, list[tuple[int, ClipRef]]] = {}
    for line, ref in refs:
        by_video.setdefault(ref.path, []).append((line, ref))
    for spans in by_video.values():
        spans.sort(key=lambda lr: (lr[1].start_s, lr[0]))
        reach: tuple[int, ClipRef] | None = None  # the span that ends last so far
        for line, ref in spans:
            if reach is not None and ref.start_s < _end(reach[1]):
                first, second = sorted((reach[0], line))
                if reach[1] == ref:
                    raise DatasetError(
                        f"{manifest}:{second}: repeats line {first} ({ref.describe()}, "
                        f"{ref.label}); list each clip once"
                    )
                raise DatasetError(
                    f"{manifest}:{second}: overlaps line {first} in {ref.path.name} "
                    f"({reach[1].describe()} {reach[1].label}, {ref.describe()} {ref.label}); "
                    "spans of one video must not share frames"
                )
            if reach is None or _end(ref) > _end(reach[1]):
                reach = (line, ref)


def _end(ref: ClipRef) -> float:
    return math.inf if ref.end_s is None else ref.end_s


@dataclass(frozen=True)
class Preprocessing:
    """What every clip becomes: frames of `size`×`size` at `fps`."""

    size: int
    fps: float


class ClipCache:
    """Decoded clips on disk, one .npy per (video bytes, span, preprocessing).

    A video's bytes are known by their SHA-256, which costs a read of the whole file:
    it is noted under `digests/` by the file's path, size, modification time and inode,
    so a video read once is not read again for it, however many runs and spans use it.
    """

    def __init__(self, root: Path, prep: Preprocessing) -> None:
        self.root = root
        self.prep = prep
        self._digests: dict[str, str] = {}  # this process's, by the note's name
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                _cache_problem(root, "cannot make the frame cache folder", e)
            ) from None

    def load(self, ref: ClipRef) -> Clip:
        """The clip, decoded now or read from the cache; raises DatasetError if unreadable."""
        try:
            digest = self._digest(ref.path)
        except OSError as e:
            if ref.path.is_symlink() and not ref.path.exists():
                raise DatasetError(
                    f"{ref.describe()}: a link to {os.readlink(ref.path)}, which does not exist"
                ) from None
            raise DatasetError(f"{ref.describe()}: cannot read ({e.strerror})") from None
        parts = (_CACHE_VERSION, digest, self.prep.size, self.prep.fps, ref.start_s, ref.end_s)
        key = hashlib.sha256("|".join(map(repr, parts)).encode()).hexdigest()[:32]
        path = self.root / f"{key}.npy"
        notes_path = path.with_suffix(".notes")
        cached = _read_cached(path)
        if cached is not None:
            return Clip(ref, cached, digest, _read_notes(notes_path))
        notes: list[str] = []
        frames = decode_clip(ref, self.prep, notes.append)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            # The notes before the frames: an entry is found by its frames, and then
            # carries its notes, or none where decoding had none.
            if notes:
                notes_tmp = notes_path.with_name(f".{notes_path.name}.{os.getpid()}.tmp")
                notes_tmp.write_text("".join(f"{line}\n" for line in notes))
                notes_tmp.replace(notes_path)
            else:
                notes_path.unlink(missing_ok=True)
            with tmp.open("wb") as f:
                np.save(f, frames)
            tmp.replace(path)  # whole or absent: a killed run leaves no half entry
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CacheError(_cache_problem(self.root, "cannot write the frame cache", e)) from None
        return Clip(ref, np.load(path, mmap_mode="r"), digest, tuple(notes))

    def _digest(self, video: Path) -> str:
        """`video`'s SHA-256, from its note when the file is as it was then."""
        st = video.stat()
        identity = (str(video.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        name = hashlib.sha256(repr(identity).encode()).hexdigest()[:32]
        if name in self._digests:
            return self._digests[name]
        note = self.root / "digests" / name
        with contextlib.suppress(OSError, UnicodeDecodeError):
            noted = note.read_text()
            if re.fullmatch("[0-9a-f]{64}", noted):
                self._digests[name] = noted
                return noted
        digest = file_digest(video)
        self._digests[name] = digest
        # A note that cannot be written costs only the next run a read.
        with contextlib.suppress(OSError):
            note.parent.mkdir(exist_ok=True)
            tmp = note.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_text(digest)
            tmp.replace(note)
        return digest


def _read_cached(path: Path) -> np.ndarray | None:
    """The cached frames; None when absent or damaged (cut short by a full disk, say):
    then they are decoded again and the entry rewritten."""
    if not path.exists():
        return None
    try:
        frames = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    return frames if frames.ndim == 4 and frames.dtype == np.uint8 else None


def _read_notes(path: Path) -> tuple[str, ...]:
    """A cache entry's notes (see Clip); none when it has no notes file."""
    try:
        return tuple(line for line in path.read_text().splitlines() if line)
    except (OSError, UnicodeDecodeError):
        return ()


def _cache_problem(root: Path, what: str, e: OSError) -> str:
    return f"{root}: {what} ({e.strerror or e}); give --cache a folder that can be written"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
            raise DatasetError(
                f"{ref.describe()}: the span starts after the video's last frame, at "
                f"{decoded.last_s:.1f} s{why}{detail}"
            )
        raise DatasetError(f"{ref.describe()}: no frames could be decoded{detail}")
    if warn is not None and short:
        warn(f"cut short or damaged: {shortfall}{detail}; using the frames it has")
    elif warn is not None and said.lines:
        warn(f"{said.summary()} while decoding it; using the frames decoded")
    # T x (H, W, 3) -> (T, H, W, 3), with each frame's source frame number (T,)
    return Counted(np.stack(decoded.frames), np.array(decoded.sources), decoded.read)


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
        if other.path == ref.path or not _shares_frames(other, ref):
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


def _shares_frames(a: ClipRef, b: ClipRef) -> bool:
    return a.start_s < _end(b) and b.start_s < _end(a)


def split(dataset: VideoDataset, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Clip indices for training and validation, drawn per label so each label is in both.

    Whole videos are held out: the spans a manifest names in one video go to one side
    together, or validation would score frames next to ones it trained on. Each label
    aims at `val_fraction` of its clips held out, rounded (so none for a label of two
    clips at 0.2), never all: a label with a single clip keeps it for training. A video
    is held out only if its clips take no label past that target, so one long video cut
    into many spans is not held out in place of a label's short clips; only a label that
    no such video can serve takes the smallest video that keeps every label a clip to
    train on.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(dataset.targets)
    by_video: dict[str, list[int]] = {}  # a video is its bytes: copies go together
    for i, clip in enumerate(dataset.clips):
        by_video.setdefault(clip.digest, []).append(i)
    total = np.bincount(targets, minlength=len(dataset.labels))
    wanted = np.minimum(total - 1, np.round(total * val_fraction).astype(total.dtype))
    held = np.zeros_like(total)
    decided: set[str] = set()
    val: list[int] = []
    candidates: list[list[str]] = []

    def hold(video: str) -> None:
        nonlocal held
        decided.add(video)
        held = held + _counts(targets, by_video[video], len(total))
        val.extend(by_video[video])

    for k in range(len(dataset.labels)):
        # The videos holding label k that are still undecided, in clip order, shuffled:
        # with one clip a video (class folders), a shuffle of the label's clips.
        ordered = dict.fromkeys(dataset.clips[i].digest for i in np.flatnonzero(targets == k))
        videos = [video for video in ordered if video not in decided]
        rng.shuffle(videos)
        candidates.append(videos)
        for video in videos:
            if held[k] >= wanted[k]:
                break
            if video not in decided and np.all(
                held + _counts(targets, by_video[video], len(total)) <= wanted
            ):
                hold(video)
    # A label no video could serve without overshooting (every video of it holds many
    # spans): the smallest of them, if every label it holds keeps a clip to train on.
    for k, videos in enumerate(candidates):
        if held[k] > 0 or wanted[k] == 0:
            continue
        for video in sorted(videos, key=lambda v: len(by_video[v])):
            counts = _counts(targets, by_video[video], len(total))
            if video not in decided and np.all((held + counts < total) | (counts == 0)):
                hold(video)
                break
    held_out = set(val)
    return [i for i in range(len(dataset.clips)) if i not in held_out], sorted(val)


def _counts(targets: np.ndarray, clips: list[int], labels: int) -> np.ndarray:
    """How many of `clips` each label has."""
    return np.bincount(targets[clips], minlength=labels)


def split_from_file(dataset: VideoDataset, path: Path) -> tuple[list[int], list[int]]:
    """Clip indices for training and validation as a `path,split` CSV says (split: train
    or val; paths relative to the CSV, as in a manifest). Every clip must be listed."""
    listed: list[tuple[int, Path, str]] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not {"path", "split"} <= {n.strip() for n in reader.fieldnames or ()}:
                raise DatasetError(f"{path}:1: expected a header row with columns path,split")
            reader.fieldnames = [n.strip() for n in reader.fieldnames or ()]
            for r in reader:
                if not r["path"] or not r["split"]:
                    raise DatasetError(f"{path}:{reader.line_num}: expected path,split")
                video = (path.parent / r["path"].strip()).resolve()
                listed.append((reader.line_num, video, r["split"].strip()))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read the split ({e})") from None
    wanted: dict[Path, str] = {}
    for line, video, where in listed:
        if video in wanted:
            # Last-wins would quietly move a video to the other side of the split.
            raise DatasetError(f"{path}: line {line} lists {video} a second time")
        wanted[video] = where
    bad = sorted(set(wanted.values()) - {"train", "val"})
    if bad:
        raise DatasetError(f"{path}: split must be train or val, got {bad}")
    # A row for a video the data lacks is a typo, which would leave the video it meant
    # unlisted or, where that video is listed too, the row silently ignored.
    known = {p.resolve() for p in dataset.found} | {c.ref.path.resolve() for c in dataset.clips}
    for line, video, _ in listed:
        if video not in known:
            raise DatasetError(
                f"{path}:{line}: {video} is not in the data set; fix its path or drop the row"
            )
    train: list[int] = []
    val: list[int] = []
    side_of: dict[str, tuple[str, Path]] = {}  # by the file's digest
    for i, clip in enumerate(dataset.clips):
        side = wanted.get(clip.ref.path.resolve())
        if side is None:
            raise DatasetError(f"{path}: no split for {clip.ref.path}")
        first, first_path = side_of.setdefault(clip.digest, (side, clip.ref.path))
        if first != side:
            # Frames held out beside the same frames trained on, under another name.
            raise DatasetError(
                f"{path}: {clip.ref.path} ({side}) has the same bytes as {first_path} "
                f"({first}); a video's copies go on one side: mark them alike"
            )
        (val if side == "val" else train).append(i)
    return train, val
