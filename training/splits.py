"""Which clips train and which are held out: drawn per label, or as a CSV says."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from actionstream.training.clips import DatasetError
from actionstream.training.videos import VideoDataset


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
    listed = _read_split(path)
    wanted = _side_of_each_video(path, listed)
    _refuse_unknown_videos(path, dataset, listed)
    _refuse_unlisted_videos(path, dataset, wanted)
    train: list[int] = []
    val: list[int] = []
    side_of: dict[str, tuple[str, Path]] = {}  # by the file's digest
    for i, clip in enumerate(dataset.clips):
        side = wanted[clip.ref.path.resolve()]
        first, first_path = side_of.setdefault(clip.digest, (side, clip.ref.path))
        if first != side:
            # Frames held out beside the same frames trained on, under another name.
            raise DatasetError(
                f"{path}: {clip.ref.path} ({side}) has the same bytes as {first_path} "
                f"({first}); a video's copies go on one side: mark them alike"
            )
        (val if side == "val" else train).append(i)
    return train, val


def _refuse_unlisted_videos(path: Path, dataset: VideoDataset, wanted: dict[Path, str]) -> None:
    """Refuses a split that leaves videos out, saying how many and naming the first few:
    one named at a time, a split file missing many was fixed a run at a time."""
    missing = list(
        dict.fromkeys(c.ref.path for c in dataset.clips if c.ref.path.resolve() not in wanted)
    )
    if missing:
        names = ", ".join(map(str, missing[:3])) + (", ..." if len(missing) > 3 else "")
        raise DatasetError(
            f"{path}: no split for {len(missing)} video(s) of the data set: {names}; list "
            "every video, train or val"
        )


def _read_split(path: Path) -> list[tuple[int, Path, str]]:
    """The split file's rows: each line, the video it names (absolute) and its side."""
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
    return listed


def _side_of_each_video(path: Path, listed: list[tuple[int, Path, str]]) -> dict[Path, str]:
    wanted: dict[Path, str] = {}
    for line, video, where in listed:
        if video in wanted:
            # Last-wins would quietly move a video to the other side of the split.
            raise DatasetError(f"{path}: line {line} lists {video} a second time")
        wanted[video] = where
    bad = sorted(set(wanted.values()) - {"train", "val"})
    if bad:
        raise DatasetError(f"{path}: split must be train or val, got {bad}")
    return wanted


def _refuse_unknown_videos(
    path: Path, dataset: VideoDataset, listed: list[tuple[int, Path, str]]
) -> None:
    # A row for a video the data lacks is a typo, which would leave the video it meant
    # unlisted or, where that video is listed too, the row silently ignored.
    known = {p.resolve() for p in dataset.found} | {c.ref.path.resolve() for c in dataset.clips}
    for line, video, _ in listed:
        if video not in known:
            raise DatasetError(
                f"{path}:{line}: {video} is not in the data set; fix its path or drop the row"
            )
