"""Scoring a recogniser the way the service runs it: one unbroken stream, state
never reset, a prediction for every frame; and isolated clips from a zero state.

`score` is the project's one evaluation recipe: training scores its validation
streams with it after every epoch; `actionstream evaluate` (evaluate.py) scores a
checkpoint with these same functions.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from actionstream.training.data import LabelledClip, Streams, action_starts, frames_since_change
from actionstream.training.model import Recognizer

# A frame is "settled" once its action has run this long: before that, the
# network has not yet seen enough of the new motion (and neither could anyone).
SETTLE_SECONDS = 1.0


def _stepped(net: Recognizer, chunks: Iterable[np.ndarray], n: int) -> Iterator[torch.Tensor]:
    """The logits (N, K, classes) of each chunk (N, K, H, W, 3) of `n` streams in turn, from
    a zero state carried from one chunk into the next, as the service carries it."""
    device = next(net.parameters()).device
    state = net.initial_state(n)
    for x in chunks:
        logits, *state = net(torch.from_numpy(x).to(device), *state)
        yield logits


@torch.no_grad()
def predict_streams(net: Recognizer, streams: Streams, chunk: int = 100) -> np.ndarray:
    """Per-frame predicted label index (N, T), state carried across the whole stream."""
    net.eval()
    n, total = streams.labels.shape
    chunks = (streams.frames[:, t0 : t0 + chunk] for t0 in range(0, total, chunk))
    preds = [logits.argmax(-1).cpu().numpy() for logits in _stepped(net, chunks, n)]
    return np.concatenate(preds, axis=1)  # (N, K) chunks -> (N, T)


@dataclass(frozen=True)
class StreamScores:
    """Per-frame accuracy on unbroken streams. Written (evaluation.json, the checkpoint's
    eval metrics) as asdict gives it: its fields in this order, as the dict it replaced."""

    frame_accuracy: float
    # Over frames `settle_frames` or more into their action; None when no frame is (every
    # action shorter): 0.0 there read as a model that never settles.
    settled_frame_accuracy: float | None
    settle_frames: int
    per_class_frame_accuracy: dict[str, float]  # the labels the streams hold
    frames: int


@dataclass(frozen=True)
class Scores(StreamScores):
    """What training scores after every epoch: the held-out streams', and the accuracy on
    isolated held-out clips."""

    clip_accuracy: float


def stream_metrics(
    preds: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    settle: int,
    cuts: np.ndarray | None = None,
) -> StreamScores:
    """Per-frame accuracy overall, after `settle` frames into each action (which starts at
    a label change or a cut, `cuts` as Streams holds them), and per class."""
    correct = preds == labels
    settled = frames_since_change(labels, cuts) >= settle
    per_class = {
        name: float(correct[labels == k].mean())
        for k, name in enumerate(names)
        if (labels == k).any()
    }
    return StreamScores(
        frame_accuracy=float(correct.mean()),
        settled_frame_accuracy=float(correct[settled].mean()) if settled.any() else None,
        settle_frames=settle,
        per_class_frame_accuracy=per_class,
        frames=int(labels.size),
    )


def clip_accuracy(net: Recognizer, clips: Sequence[LabelledClip]) -> float:
    """Isolated clips, each from a zero state, judged on their last frame."""
    truth = np.array([c.label for c in clips])
    return float((clip_predictions(net, clips) == truth).mean())


def score(
    net: Recognizer,
    streams: Streams,
    clips: Sequence[LabelledClip],
    names: Sequence[str],
    fps: float,
) -> Scores:
    """Per-frame metrics on unbroken `streams`, plus accuracy on isolated `clips`."""
    preds = predict_streams(net, streams)
    settle = int(SETTLE_SECONDS * fps)
    on_streams = stream_metrics(preds, streams.labels, names, settle, streams.cuts)
    return Scores(**asdict(on_streams), clip_accuracy=clip_accuracy(net, clips))


@dataclass(frozen=True)
class SwitchLatency:
    """How fast predictions follow a change of action. Written (evaluation.json) as asdict
    gives it: its fields in this order, as the dict it replaced."""

    changes: int
    followed: int  # changes the prediction reached within their action
    missed: int
    # Frames from a change to the first frame predicting it; None when none was followed.
    mean_frames: float | None
    median_frames: float | None


def switch_latency(
    preds: np.ndarray, labels: np.ndarray, cuts: np.ndarray | None = None
) -> SwitchLatency:
    """Frames from each change of label until the prediction follows it.

    For every label change (N, T) streams hold, the latency is the number of
    frames after it before the prediction first equals the new label, within
    that action; an action the prediction never reaches counts as missed. A cut
    between two clips of one label (`cuts`, as Streams holds them) starts no new
    switch: the prediction has nothing to follow, and each would count as 0 frames.
    It does end the action before it, which is searched no further.
    """
    latencies, missed = [], 0
    for pred, truth, start in zip(preds, labels, action_starts(labels, cuts), strict=True):
        starts = [*np.flatnonzero(start), len(truth)]  # the first frame's always among them
        for a, b in itertools.pairwise(starts[1:]):  # every segment after a change
            if truth[a] == truth[a - 1]:  # a cut within one label: no switch to follow
                continue
            hit = np.flatnonzero(pred[a:b] == truth[a])
            if len(hit):
                latencies.append(int(hit[0]))
            else:
                missed += 1
    changes = len(latencies) + missed
    return SwitchLatency(
        changes=changes,
        followed=len(latencies),
        missed=missed,
        mean_frames=float(np.mean(latencies)) if latencies else None,
        median_frames=float(np.median(latencies)) if latencies else None,
    )


@torch.no_grad()
def clip_predictions(
    net: Recognizer, clips: Sequence[LabelledClip], batch: int = 64, chunk: int = 100
) -> np.ndarray:
    """Each clip's predicted label (its last frame's), from a zero state, in order.

    Clips of one length run as one batch, `chunk` frames at a time with the state carried
    (as predict_streams does): memory follows the chunk, not the clip, so a 5-minute
    held-out clip costs what a 10-second one does, and every epoch's validation runs it.
    """
    net.eval()
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_length.setdefault(len(clip.frames), []).append(i)
    out = np.empty(len(clips), np.int64)
    for length, members in by_length.items():
        for b0 in range(0, len(members), batch):
            part = members[b0 : b0 + batch]
            # Only this chunk of each (memory-mapped) clip is read.
            chunks = (
                # P x (K, H, W, 3) -> (P, K, H, W, 3)
                np.stack([np.asarray(clips[i].frames[t0 : t0 + chunk]) for i in part])
                for t0 in range(0, length, chunk)
            )
            # A clip is judged on its last frame, which the last chunk holds.
            (logits,) = collections.deque(_stepped(net, chunks, len(part)), maxlen=1)
            out[part] = logits[:, -1].argmax(-1).cpu().numpy()  # (P, K, classes) -> (P,)
    return out


@torch.no_grad()
def predict_joined(net: Recognizer, clips: Sequence[LabelledClip], chunk: int = 100) -> np.ndarray:
    """Per-frame predicted label (T,) of `clips` one after another as one unbroken stream,
    as predict_streams gives for them joined, without joining them: only a chunk of
    one clip at a time is in memory, however many clips an evaluation scores."""
    net.eval()
    # A copy: the cache's frames are a read-only memmap, which torch warns of.
    chunks = (
        np.array(clip.frames[t0 : t0 + chunk])[None]  # (K, H, W, 3) -> (1, K, H, W, 3)
        for clip in clips
        for t0 in range(0, len(clip.frames), chunk)
    )
    preds = [logits[0].argmax(-1).cpu().numpy() for logits in _stepped(net, chunks, 1)]
    return np.concatenate(preds)  # (K,) chunks -> (T,)


@dataclass(frozen=True)
class ClipReport:
    """Isolated clips' scores. Written (evaluation.json) as asdict gives it: its fields in
    this order, as the dict it replaced."""

    clip_accuracy: float
    clips: int
    per_class_clip_accuracy: dict[str, float]  # the labels the clips hold
    confusion: list[list[int]]  # rows: truth, columns: predicted


def clip_report(preds: np.ndarray, truth: np.ndarray, names: Sequence[str]) -> ClipReport:
    """Top-1, per-class accuracy and the confusion matrix (rows: truth, columns: predicted)."""
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (truth, preds), 1)
    per_class = {
        name: float(confusion[k, k] / confusion[k].sum())
        for k, name in enumerate(names)
        if confusion[k].sum()
    }
    return ClipReport(
        clip_accuracy=float((preds == truth).mean()),
        clips=len(truth),
        per_class_clip_accuracy=per_class,
        confusion=confusion.tolist(),
    )
