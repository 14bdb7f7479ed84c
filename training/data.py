"""What training reads: untrimmed streams with a label per frame, in batches.

Two sources give the same shape of data (training/train.py does not know
which it has): the project's own synthetic world (`SyntheticData`, rendered
up front) and users' videos (`VideoData` in training/video_data.py, clips
joined into streams as each batch is drawn). Each also holds its held-out
part: unbroken streams scored frame by frame, and isolated clips.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from actionstream.training.synth import (
    BACKGROUND_LABEL,
    LABELS,
    SynthConfig,
    render_clip,
    render_stream,
)

IGNORE = -100  # target value cross-entropy skips

# Held-out streams draw seeds from a range training never uses.
_HELD_OUT_OFFSET = 1_000_000_000
# Isolated held-out clips of the synthetic world: this many per class, this long, judged
# on their last frame.
CLIPS_PER_CLASS = 20
CLIP_SECONDS = 2.0


@dataclass(frozen=True)
class Streams:
    frames: np.ndarray  # (N, T, S, S, 3) uint8 BGR
    labels: np.ndarray  # (N, T) int64 label index per frame
    # (N, T) bool, True on the first frame of every clip joined into the streams: a cut
    # between two clips of one label is a new action as much as a change of label is.
    # None where no cut is known beyond the label changes (synthetic streams, one video).
    cuts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class LabelledClip:
    """One isolated action, scored from a zero state on its last frame."""

    frames: np.ndarray  # (T, S, S, 3) uint8 BGR
    label: int


class TrainingData(Protocol):
    """A labelled data set as training and validation read it."""

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def background_label(self) -> str | None: ...

    @property
    def version(self) -> str:
        """Names the data in the model's version."""
        ...

    @property
    def trained_videos(self) -> tuple[str, ...]:
        """The SHA-256 of each video file trained on (none for the synthetic world), so
        that `evaluate` can tell a user who scores the model on them, under any name."""
        ...

    @property
    def clip_sides(self) -> tuple[tuple[str, str], ...]:
        """Every clip (its video's SHA-256, span and label) with its side, train or val,
        sorted: what `--resume` checks the data against. None for the synthetic world,
        which its settings determine."""
        ...

    @property
    def val_streams(self) -> Streams: ...

    @property
    def val_clips(self) -> Sequence[LabelledClip]: ...

    def batches(
        self, rng: np.random.Generator, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[Streams]:
        """This process's share of one epoch's batches, (B, T) streams each.

        `rng` is in the same state on every process (so they agree on the
        epoch); `shard` is (rank, processes): each gets a different part.
        """
        ...


class SyntheticData:
    """The procedural world of training/synth.py, every stream rendered once up front."""

    labels = LABELS
    background_label: str | None = BACKGROUND_LABEL
    trained_videos: tuple[str, ...] = ()
    clip_sides: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        cfg: SynthConfig,
        train_streams: int,
        stream_frames: int,
        val_streams: int,
        val_frames: int,
        batch_size: int,
        seed: int,
    ) -> None:
        self.version = f"synthetic-{cfg.size}px-seed{seed}"
        self.train = render_streams(train_streams, stream_frames, seed, cfg)
        # Clip seeds sit apart from the streams' seeds.
        self.val_streams, self.val_clips = synthetic_held_out(
            cfg, val_streams, val_frames, seed, clip_seed=seed + 5
        )
        self._batch_size = batch_size

    def batches(
        self, rng: np.random.Generator, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[Streams]:
        rank, size = shard
        order = rng.permutation(len(self.train))
        starts = list(range(0, len(order) - self._batch_size + 1, self._batch_size))
        even = len(starts) // size * size  # every process takes as many steps: none waits alone
        for b0 in starts[:even][rank::size]:
            idx = np.sort(order[b0 : b0 + self._batch_size])
            yield Streams(self.train.frames[idx], self.train.labels[idx])


def synthetic_held_out(
    cfg: SynthConfig, streams: int, frames: int, seed: int, clip_seed: int
) -> tuple[Streams, list[LabelledClip]]:
    """The synthetic world's held-out data, as training validates on it and `evaluate`
    scores a model: `streams` unbroken streams of `frames` frames, and CLIPS_PER_CLASS
    isolated clips of every action, CLIP_SECONDS long."""
    clips = synthetic_clips(cfg, CLIPS_PER_CLASS, int(CLIP_SECONDS * cfg.fps), clip_seed)
    return render_streams(streams, frames, seed, cfg, held_out=True), clips


def synthetic_clips(
    cfg: SynthConfig, per_class: int, n_frames: int, seed: int
) -> list[LabelledClip]:
    """`per_class` isolated clips of every synthetic action, `n_frames` long."""
    return [
        LabelledClip(render_clip(label, n_frames, seed + 7919 * k + i, cfg), k)
        for k, label in enumerate(LABELS)
        for i in range(per_class)
    ]


def render_streams(
    n: int, n_frames: int, seed: int, cfg: SynthConfig, held_out: bool = False
) -> Streams:
    base = seed * 100_003 + (_HELD_OUT_OFFSET if held_out else 0)
    frames = np.empty((n, n_frames, cfg.size, cfg.size, 3), np.uint8)
    labels = np.empty((n, n_frames), np.int64)
    for i in range(n):
        frames[i], labels[i] = render_stream(n_frames, base + i, cfg)
    return Streams(frames, labels)


def action_starts(labels: np.ndarray, cuts: np.ndarray | None = None) -> np.ndarray:
    """(N, T) -> (N, T) bool: where an action starts. That is the first frame of every
    stream, every change of label, and every cut (`cuts`, as Streams holds them): two
    clips of one label joined are two actions, each with its own start."""
    starts = np.zeros(labels.shape, bool)
    starts[:, 0] = True
    starts[:, 1:] = labels[:, 1:] != labels[:, :-1]
    if cuts is not None:
        if cuts.shape != labels.shape:
            raise ValueError(f"cuts {cuts.shape} do not match labels {labels.shape}")
        starts |= cuts
    return starts


def frames_since_change(labels: np.ndarray, cuts: np.ndarray | None = None) -> np.ndarray:
    """(N, T) -> (N, T): how many frames each frame lies after the start of its action
    (action_starts: the stream's first frame, a label change or a cut), the start 0."""
    starts = action_starts(labels, cuts)
    since = np.zeros_like(labels)
    for t in range(1, labels.shape[1]):
        since[:, t] = np.where(starts[:, t], 0, since[:, t - 1] + 1)
    return since


def loss_targets(
    labels: np.ndarray, boundary_ignore: int, cuts: np.ndarray | None = None
) -> np.ndarray:
    """Labels with the first frames of every action (and of the stream) set to IGNORE;
    an action starts at a label change and at a cut between clips (`cuts`).

    Right after an action changes, the frames cannot yet show which action
    follows; asking for it there only teaches the network to guess. After a cut
    between two clips of one label, the motion jumps just as at a change.
    """
    targets = labels.copy()
    targets[frames_since_change(labels, cuts) < boundary_ignore] = IGNORE
    return targets
