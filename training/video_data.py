"""Users' clips joined into untrimmed training streams, the way the service will see them.

A model trained on isolated clips and then streamed with a never-reset state
falls below chance, so training never shows clips alone: each stream is
clip after clip without a cut (a background clip between two actions where
the data has a background label), entered at a random point, cut to length.
The state is carried across those boundaries exactly as across chunks.
Where clips meet is kept with the stream (Streams.cuts): the loss's
--boundary-ignore and the settled accuracy count every such cut as the start
of an action, two clips of one label side by side too.

Augmentation keeps labels true for classes told apart by direction or order:
no flips and no reversal. Per clip: playback speed, a crop (zoom and shift),
brightness and contrast; per frame: noise. Validation data is never augmented.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from actionstream.training.clip_sources import find_clips
from actionstream.training.clips import Clip, Preprocessing
from actionstream.training.data import LabelledClip, Streams
from actionstream.training.frame_cache import ClipCache
from actionstream.training.videos import VideoDataset, load_dataset


@dataclass(frozen=True)
class Augment:
    """Label-preserving perturbations, drawn per clip (noise per frame)."""

    speed: tuple[float, float] = (0.8, 1.25)  # playback rate
    crop: float = 0.8  # smallest fraction of each side a crop keeps
    brightness: float = 20.0  # grey levels, up or down
    contrast: tuple[float, float] = (0.8, 1.25)
    noise: float = 6.0  # largest per-frame noise std, grey levels


NO_AUGMENT = Augment(speed=(1.0, 1.0), crop=1.0, brightness=0.0, contrast=(1.0, 1.0), noise=0.0)


def augment(
    frames: np.ndarray,
    rng: np.random.Generator,
    aug: Augment,
    enter_anywhere: bool = False,
    limit: int | None = None,
) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T', H, W, 3) uint8: the clip played at a drawn speed (T/speed
    frames), from a random one of those frames when `enter_anywhere`, at most `limit` of
    them. Only the frames kept are read and perturbed: a 5-minute span that a stream
    takes 80 frames of costs 80 frames' work, not 3,000."""
    T, H, W = frames.shape[:3]
    speed = rng.uniform(*aug.speed)
    at = np.arange(0, T / speed) * speed  # (T',) source position of each output frame
    if speed < 1:  # past the last frame there is nothing to blend towards: it would repeat
        at = at[at <= T - 1]
    if enter_anywhere:  # a camera rarely starts where an action does
        at = at[int(rng.integers(len(at))) :]
    if limit is not None:
        at = at[:limit]
    out = _played_at(frames, at, blend=speed < 1)  # (T', H, W, 3) float32
    side = rng.uniform(aug.crop, 1.0)
    # A crop keeps at least 2 pixels a side, so it zooms, not just picks a pixel; a
    # frame of 1 or 2 (--size 1 and 2 train too) has nothing that small to crop to.
    ch, cw = min(H, max(2, round(H * side))), min(W, max(2, round(W * side)))
    if (ch, cw) != (H, W):
        y0, x0 = rng.integers(0, H - ch + 1), rng.integers(0, W - cw + 1)
        out = np.stack(
            [cv2.resize(f[y0 : y0 + ch, x0 : x0 + cw], (W, H)) for f in out]
        )  # (T', ch, cw, 3) -> (T', H, W, 3)
    out = (out - 128.0) * rng.uniform(*aug.contrast) + 128.0 + rng.uniform(-1, 1) * aug.brightness
    if aug.noise > 0:
        bank = _noise_bank(out.shape[1:])
        out += bank[rng.integers(len(bank), size=len(out))] * np.float32(rng.uniform(0, aug.noise))
    return np.clip(out, 0, 255).astype(np.uint8)


def _played_at(frames: np.ndarray, at: np.ndarray, blend: bool) -> np.ndarray:
    """(T, H, W, 3) uint8 at source positions `at` (T',) -> (T', H, W, 3) float32.

    Played faster than recorded, each position takes the frame at or before it,
    skipping some, as a camera does a faster action. Played slower (`blend`), a
    position between two frames is their linear blend: picking the one before
    repeated frames, whose difference is zero, so the motion-only network saw no
    motion labelled as an action (5.7% of the frame differences of a moving test
    clip), where the server never repeats a frame (actionstream/resampling.py).
    """
    last = len(frames) - 1
    before = np.minimum(np.floor(at).astype(int), last)
    after = np.minimum(before + 1, last)
    if not blend:
        return np.asarray(frames[before], dtype=np.float32)
    weight = (at - before).astype(np.float32)[:, None, None, None]  # (T',) -> (T', 1, 1, 1)
    first = np.asarray(frames[before], dtype=np.float32)
    return first + (np.asarray(frames[after], dtype=np.float32) - first) * weight


@functools.cache
def _noise_bank(shape: tuple[int, ...], frames: int = 256) -> np.ndarray:
    """(frames, H, W, 3) float32 unit Gaussian noise, drawn once per frame shape.

    Drawing fresh Gaussian noise for every frame was 80% of the data pipeline's
    time (about 30 s an epoch of the defaults on this 2-core machine); frames
    drawn at random from a fixed bank of 256 look as random to the network.
    """
    return np.random.default_rng(0).standard_normal((frames, *shape), dtype=np.float32)


def join_clips(
    clips: Sequence[LabelledClip],
    order: Sequence[int],
    n_frames: int | None,
    background: Sequence[int],
    rng: np.random.Generator,
    aug: Augment,
    enter_anywhere: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One stream: the clips in `order`, each action after the first preceded by a
    background clip drawn from `background` (when it has any), cut to `n_frames`
    (None: all of it). Returns frames (T, H, W, 3) uint8, labels (T,) int64 and cuts
    (T,) bool, True on each clip's first frame: where two clips of one label meet,
    the labels alone would not show that a new action starts."""
    parts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    cuts: list[np.ndarray] = []
    total = 0
    for i, k in enumerate(order):
        pieces = [k] if not background or i == 0 else [_pick(background, rng), k]
        for piece in pieces:
            # Cut before augmenting: only the frames the stream takes are worked on.
            left = None if n_frames is None else n_frames - total
            frames = augment(clips[piece].frames, rng, aug, enter_anywhere and total == 0, left)
            parts.append(frames)
            labels.append(np.full(len(frames), clips[piece].label, np.int64))
            cuts.append(np.arange(len(frames)) == 0)
            total += len(frames)
            if n_frames is not None and total >= n_frames:
                break
        if n_frames is not None and total >= n_frames:
            break
    # Clips end to end: (T_i, H, W, 3) -> (T, H, W, 3); their labels and cuts (T_i,) -> (T,).
    frames_out, labels_out = np.concatenate(parts), np.concatenate(labels)
    cuts_out = np.concatenate(cuts)
    if n_frames is None:
        return frames_out, labels_out, cuts_out
    if total < n_frames:  # fewer clips than the stream is long: go round again
        reps = -(-n_frames // total)
        # (T, H, W, 3) -> (reps*T, H, W, 3); (T,) -> (reps*T,)
        frames_out, labels_out = np.concatenate([frames_out] * reps), np.tile(labels_out, reps)
        cuts_out = np.tile(cuts_out, reps)  # going round is a cut too: its first frame's is True
    return frames_out[:n_frames], labels_out[:n_frames], cuts_out[:n_frames]


def _pick(pool: Sequence[int], rng: np.random.Generator) -> int:
    return pool[int(rng.integers(len(pool)))]


class VideoData:
    """A user's labelled videos as training batches and held-out streams and clips."""

    def __init__(
        self,
        dataset: VideoDataset,
        train_idx: Sequence[int],
        val_idx: Sequence[int],
        background_label: str | None,
        streams_per_epoch: int,
        stream_frames: int,
        batch_size: int,
        val_frames: int,
        seed: int,
        aug: Augment | None = None,
    ) -> None:
        self.labels = dataset.labels
        self.background_label = background_label
        self.version = f"videos-{len(dataset.labels)}labels-seed{seed}"
        clips = dataset.labelled()
        self.trained_videos = tuple(sorted({dataset.clips[i].digest for i in train_idx}))
        # By content, not path: a data folder moved or mounted elsewhere is the same data.
        sides = [(i, "train") for i in train_idx] + [(i, "val") for i in val_idx]
        self.clip_sides = tuple(
            sorted(
                (clip_key(dataset.clips[i], self.labels[dataset.targets[i]]), side)
                for i, side in sides
            )
        )
        self.train_clips = [clips[i] for i in train_idx]
        self.val_clips = [clips[i] for i in val_idx]
        bg = self.labels.index(background_label) if background_label in self.labels else None
        self._train_bg = [i for i, c in enumerate(self.train_clips) if c.label == bg]
        self._by_label: dict[int, list[int]] = {}
        for i, c in enumerate(self.train_clips):
            if c.label != bg:
                self._by_label.setdefault(c.label, []).append(i)
        self._per_epoch = streams_per_epoch
        self._stream_frames = stream_frames
        self._batch_size = batch_size
        self._aug = Augment() if aug is None else aug
        self.val_streams = self._held_out_streams(val_frames, bg, np.random.default_rng(seed + 1))

    def batches(
        self, rng: np.random.Generator, shard: tuple[int, int] = (0, 1)
    ) -> Iterator[Streams]:
        rank, size = shard
        if size > 1:  # one shared draw, then streams of this process's own
            rng = np.random.default_rng([int(rng.integers(2**63)), rank])
        for _ in range(max(1, self._per_epoch // self._batch_size // size)):
            streams = [self._stream(rng) for _ in range(self._batch_size)]
            frames = np.stack([f for f, _, _ in streams])  # B x (T, H, W, 3) -> (B, T, H, W, 3)
            labels = np.stack([y for _, y, _ in streams])  # B x (T,) -> (B, T)
            yield Streams(frames, labels, np.stack([c for _, _, c in streams]))  # cuts (B, T)

    def _stream(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # A label drawn evenly, then one of its clips: a rare label is seen as often as the rest.
        keys = sorted(self._by_label)
        n = self._stream_frames // 4 + 1  # more clips than a stream of short clips can hold
        order = [_pick(self._by_label[_pick(keys, rng)], rng) for _ in range(n)]
        return join_clips(
            self.train_clips, order, self._stream_frames, self._train_bg, rng, self._aug, True
        )

    def _held_out_streams(self, n_frames: int, bg: int | None, rng: np.random.Generator) -> Streams:
        """Every validation clip once, in a fixed shuffled order, background between actions,
        cut into streams of about `n_frames`."""
        background = [i for i, c in enumerate(self.val_clips) if c.label == bg]
        actions = [
            int(i)
            for i in rng.permutation([i for i, c in enumerate(self.val_clips) if c.label != bg])
        ]
        frames, labels, cuts = join_clips(
            self.val_clips, actions, None, background, rng, NO_AUGMENT, False
        )
        n = max(1, len(frames) // n_frames)
        T = len(frames) // n
        return Streams(
            frames[: n * T].reshape(n, T, *frames.shape[1:]),  # (n*T, H, W, 3) -> (n, T, H, W, 3)
            labels[: n * T].reshape(n, T),  # (n*T,) -> (n, T)
            cuts[: n * T].reshape(n, T),  # (n*T,) -> (n, T)
        )


def clip_key(clip: Clip, label: str) -> str:
    """One clip by its content: the video's SHA-256, the span taken of it (every digit
    of its bounds: 12345.61 s is not 12345.64 s), its label."""
    end = "end" if clip.ref.end_s is None else f"{clip.ref.end_s!r}s"
    return f"{clip.digest} {clip.ref.start_s!r}s-{end} {label}"


def recorded_split(
    dataset: VideoDataset, sides: dict[str, str]
) -> tuple[list[int], list[int]] | None:
    """Clip indices for training and validation as a resumed run recorded them (`sides`,
    by clip_key), for these clips in whatever order they come now (renamed files, rows
    reordered: split() would draw another split); None when a clip is not in the record."""
    keys = [
        clip_key(c, dataset.labels[t]) for c, t in zip(dataset.clips, dataset.targets, strict=True)
    ]
    if any(k not in sides for k in keys):
        return None
    return (
        [i for i, k in enumerate(keys) if sides[k] == "train"],
        [i for i, k in enumerate(keys) if sides[k] == "val"],
    )


def open_videos(
    data: Path,
    cache_dir: Path,
    size: int,
    fps: float,
    min_frames: int,
    report: Callable[[str], None] = print,
) -> VideoDataset:
    """Finds, decodes (or reads back from the cache) and checks a user's data set."""
    refs = find_clips(data, report)
    return load_dataset(refs, ClipCache(cache_dir, Preprocessing(size, fps)), min_frames, report)
