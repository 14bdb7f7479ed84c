"""Training and held-out data: rendered synthetic streams with per-frame targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from actionstream.training.synth import SynthConfig, render_stream

IGNORE = -100  # target value cross-entropy skips

# Held-out streams draw seeds from a range training never uses.
_HELD_OUT_OFFSET = 1_000_000_000


@dataclass(frozen=True)
class Streams:
    frames: np.ndarray  # (N, T, S, S, 3) uint8 BGR
    labels: np.ndarray  # (N, T) int64 label index per frame

    def __len__(self) -> int:
        return len(self.frames)


def render_streams(
    n: int, n_frames: int, seed: int, cfg: SynthConfig, held_out: bool = False
) -> Streams:
    base = seed * 100_003 + (_HELD_OUT_OFFSET if held_out else 0)
    frames = np.empty((n, n_frames, cfg.size, cfg.size, 3), np.uint8)
    labels = np.empty((n, n_frames), np.int64)
    for i in range(n):
        frames[i], labels[i] = render_stream(n_frames, base + i, cfg)
    return Streams(frames, labels)


def frames_since_change(labels: np.ndarray) -> np.ndarray:
    """(N, T) -> (N, T): how many frames each frame lies after the start of its action.

    The first frame of every stream counts as a start (0).
    """
    since = np.zeros_like(labels)
    for t in range(1, labels.shape[1]):
        since[:, t] = np.where(labels[:, t] != labels[:, t - 1], 0, since[:, t - 1] + 1)
    return since


def loss_targets(labels: np.ndarray, boundary_ignore: int) -> np.ndarray:
    """Labels with the first frames of every action (and of the stream) set to IGNORE.

    Right after an action changes, the frames cannot yet show which action
    follows; asking for it there only teaches the network to guess.
    """
    targets = labels.copy()
    targets[frames_since_change(labels) < boundary_ignore] = IGNORE
    return targets
