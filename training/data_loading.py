"""Where training's data comes from: the synthetic world at the run's size and rate, or
the user's videos, split into the clips to train on and those held out.

Read by `train` (and the benchmarks) before a run starts. `evaluate` scores a model on
the synthetic world's held-out part as training validates on it, through
training/data.py's `synthetic_held_out`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from actionstream.training.clips import DatasetError
from actionstream.training.config import TrainConfig
from actionstream.training.data import SyntheticData, TrainingData
from actionstream.training.errors import TrainingError
from actionstream.training.splits import split, split_from_file
from actionstream.training.synth import SynthConfig
from actionstream.training.video_data import VideoData, open_videos, recorded_split
from actionstream.training.videos import MIN_CLIP_FRAMES, VideoDataset

# How much slower than --fps a video must be to be warned of: a 29.97 fps video at --fps
# 30 gives every frame either way.
_RATE_SLACK = 0.05


def load_data(
    cfg: TrainConfig,
    say: Callable[..., None] = print,
    sides: dict[str, str] | None = None,
    *,
    warn: Callable[..., None] | None = None,
) -> TrainingData:
    """The synthetic world, or the user's videos under `cfg.data`, split as a resumed run
    recorded (`sides`, by clip) when it holds these clips. Its skipped-video and warning
    lines go to `warn` (train's stderr), or with the rest to `say` when it is not given."""
    warn = warn or say
    if cfg.data is None:
        return synthetic_data(cfg)
    try:
        dataset = open_videos(
            Path(cfg.data), Path(cfg.cache), cfg.size, cfg.fps, MIN_CLIP_FRAMES, report=warn
        )
    except DatasetError as e:
        raise TrainingError(str(e)) from None
    if cfg.background is not None and cfg.background not in dataset.labels:
        raise TrainingError(
            f"--background {cfg.background!r} is not one of the labels {list(dataset.labels)}"
        )
    train_idx, val_idx = _split(dataset, cfg, sides)
    # Per label, what was held out of how many: a bare count there read as the held-out one.
    held = [dataset.targets[i] for i in val_idx]
    counts = ", ".join(
        # A label with a comma or a space of its own in quotes, so the list still reads.
        f"{repr(label) if ',' in label or ' ' in label else label} {held.count(k)} of {n}"
        for k, (label, n) in enumerate(dataset.per_class().items())
    )
    # Refused before the summary: a split that cannot train said "N clips to train on"
    # first, as if it would.
    _check_split(dataset, train_idx, val_idx, cfg.split, cfg.val_fraction)
    say(
        f"{len(train_idx)} clips to train on, {len(val_idx)} held out "
        f"(held out of each label's clips: {counts})"
    )
    _warn_unscored(dataset, val_idx, cfg.split, warn)
    _warn_slower_videos(dataset, cfg.fps, warn)
    return VideoData(
        dataset,
        train_idx,
        val_idx,
        cfg.background,
        cfg.train_streams,
        cfg.stream_frames,
        cfg.batch_size,
        cfg.val_frames,
        cfg.seed,
    )


def _split(
    dataset: VideoDataset, cfg: TrainConfig, sides: dict[str, str] | None
) -> tuple[list[int], list[int]]:
    """The clips to train on and those held out: as a resumed run recorded them when it
    holds these clips, else as --split names them, else --val-fraction of each label's."""
    recorded = None if sides is None else recorded_split(dataset, sides)
    if recorded is not None:
        return recorded
    try:
        if cfg.split:
            return split_from_file(dataset, Path(cfg.split))
        return split(dataset, cfg.val_fraction, cfg.seed)
    except DatasetError as e:
        raise TrainingError(str(e)) from None


def _check_split(
    dataset: VideoDataset,
    train_idx: list[int],
    val_idx: list[int],
    split_file: str | None,
    val_fraction: float,
) -> None:
    """Refuses a split that leaves a label untrainable or nothing to validate on."""
    by = _split_by(split_file)
    untrained = [
        label
        for k, label in enumerate(dataset.labels)
        if all(dataset.targets[i] != k for i in train_idx)
    ]
    if untrained:
        raise TrainingError(f"{by} no video to train on for label(s) {', '.join(untrained)}")
    if not val_idx:
        raise TrainingError(
            f"{split_file} marks no usable video val: nothing left to validate on"
            if split_file
            else f"no clip left to validate on: --val-fraction {val_fraction:g} held out no "
            f"whole video (of each label's {max(dataset.per_class().values())} clip(s) or "
            "fewer it rounds down to none, and a label keeps a video to train on); raise it, "
            "add videos, or name the held-out ones with --split"
        )


def _split_by(split_file: str | None) -> str:
    return f"{split_file} leaves" if split_file else "the split leaves"


def _warn_unscored(
    dataset: VideoDataset, val_idx: list[int], split_file: str | None, warn: Callable[..., None]
) -> None:
    """Names the labels that validation cannot score."""
    unscored = [
        label
        for k, label in enumerate(dataset.labels)
        if all(dataset.targets[i] != k for i in val_idx)
    ]
    if unscored:
        warn(
            f"warning: {_split_by(split_file)} no held-out video for label(s) "
            f"{', '.join(unscored)}; "
            "validation cannot tell how well the model knows them"
        )


def _warn_slower_videos(dataset: VideoDataset, fps: float, warn: Callable[..., None]) -> None:
    """Warns once when --fps is above the frame rate of videos (by their bytes): each of
    their frames is stepped once (actionstream/resampling.py), so the model learns their
    motion as if it came faster than it does, and its seconds-long measures (settled
    accuracy) see fewer frames than they count on."""
    rates = {c.digest: c.source_fps for c in dataset.clips if c.source_fps is not None}
    slower = sorted(r for r in rates.values() if fps > r * (1 + _RATE_SLACK))
    if slower:
        span = f"{slower[0]:g}" if slower[0] == slower[-1] else f"{slower[0]:g} to {slower[-1]:g}"
        warn(
            f"warning: --fps {fps:g} is above the frame rate of {len(slower)} of the "
            f"{len(rates)} videos ({span} fps): every frame of theirs is taken, each farther "
            f"apart in time than the model assumes; train at --fps {slower[0]:g} or lower to "
            "match them"
        )


def synthetic_data(cfg: TrainConfig) -> SyntheticData:
    """The synthetic world at `cfg`'s size, rate and amounts, rendered up front."""
    return SyntheticData(
        SynthConfig(size=cfg.size, fps=cfg.fps),
        cfg.train_streams,
        cfg.stream_frames,
        cfg.val_streams,
        cfg.val_frames,
        cfg.batch_size,
        cfg.seed,
    )
