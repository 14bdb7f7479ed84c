"""The clips a data set names: a folder of class folders, or a CSV manifest.

- a folder of class folders, `DIR/<label>/...` (the UCF101/HMDB51 layout):
  each video anywhere under a label's folder, subfolders included, is one
  clip of that label; files in class folders that are not videos are named and
  left out. The label is the folder's name without the spaces around it, as a
  manifest's is: two folders that differ only by those (`left`, `left `) are one
  label, as subfolders of one are;
- a CSV manifest with a header `path,label[,start_s,end_s]` (manifest.py): each row
  is a clip, a whole file or a labelled segment of a long untrimmed video; paths
  are relative to the CSV.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from actionstream.training.clips import ClipRef, DatasetError
from actionstream.training.config import VIDEO_SUFFIXES
from actionstream.training.manifest import read_manifest


def find_clips(data: Path, report: Callable[[str], None] = print) -> list[ClipRef]:
    """The clips a class-folder directory or a CSV manifest names; raises DatasetError."""
    if data.is_dir():
        return _refuse_near_labels(data, _from_folders(data, report))
    if data.is_file() and data.suffix.lower() == ".csv":
        return _refuse_near_labels(data, read_manifest(data, report))
    if not data.exists():
        raise DatasetError(f"{data}: no such folder or manifest")
    raise DatasetError(f"{data}: expected a folder of class folders or a .csv manifest")


def _refuse_near_labels(data: Path, refs: list[ClipRef]) -> list[ClipRef]:
    """Refuses two labels that differ only by case or surrounding spaces (`Left` and
    `left`): taken as they are, they would train as two classes of one action, each
    with half its videos. (Both readers strip labels already; the spaces are a guard.)"""
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
    seen: set[Path] = set()
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(Path(p.name)))
    for folder in folders:
        # Stripped as a manifest's or a frame,label CSV's label is: `spaced ` kept as it
        # is would be a label no manifest nor labels file could name.
        label = folder.name.strip()
        if not label:
            raise DatasetError(
                f"{folder}: a class folder's name is its label, and {folder.name!r} is "
                "blank without the spaces around it; rename the folder"
            )
        for path in _files_under(folder, seen):
            if path.suffix.lower() in VIDEO_SUFFIXES:
                refs.append(ClipRef(path, label))
            else:
                others.append(path.relative_to(root))
    # By label, not folder: `left ` without videos beside `left` with them leaves no
    # label untrained.
    labelled = {ref.label for ref in refs}
    empty = [f.name for f in folders if f.name.strip() not in labelled]
    if others:
        # Named, not silently dropped: a video in a format OpenCV reads but this list
        # lacks can be given through a manifest, which takes any file.
        names = ", ".join(str(p) for p in others[:5]) + (", ..." if len(others) > 5 else "")
        report(
            f"ignored {len(others)} file(s) that are not videos by their name "
            f"({'|'.join(VIDEO_SUFFIXES)}): {names}"
        )
    # Videos beside the class folders have no label: named, as a class's folder given as
    # --data (its videos directly in it) or a class left out would otherwise go unsaid.
    loose = sorted(
        p
        for p in root.iterdir()
        if not _hidden(Path(p.name)) and p.suffix.lower() in VIDEO_SUFFIXES and not p.is_dir()
    )
    if not refs:
        if loose:
            raise DatasetError(
                f"{root}: no videos in class folders, but {len(loose)} directly in it: it "
                f"looks like one class's folder; give --data its parent ({root.parent}), "
                "the folder of class folders (one per label)"
            )
        raise DatasetError(
            f"{root}: no videos found; expected {root}/<label>/*"
            f"{'|'.join(VIDEO_SUFFIXES)} (one folder per class)"
        )
    if loose:
        names = ", ".join(p.name for p in loose[:5]) + (", ..." if len(loose) > 5 else "")
        report(
            f"ignored {len(loose)} video(s) directly in {root}, beside the class folders "
            f"(a video's label is the folder it is in): {names}; move each into "
            f"{root}/<label>/ to train on it"
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
