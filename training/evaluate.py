"""Scoring a recogniser the way the service runs it: one unbroken stream, state
never reset, a prediction for every frame; and isolated clips from a zero state.

`score` is the project's one evaluation recipe: training scores its validation
streams with it after every epoch, `actionstream evaluate` scores a checkpoint.
"""

from __future__ import annotations

import collections
import itertools
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from actionstream.frame_labels import LabelsError, read_frame_labels
from actionstream.settings import resolved
from actionstream.training.clip_decode import decode_counted
from actionstream.training.clip_sources import find_clips
from actionstream.training.clips import ClipRef, DatasetError, Preprocessing
from actionstream.training.config import VIDEO_SUFFIXES, EvaluateConfig
from actionstream.training.data import (
    LabelledClip,
    Streams,
    action_starts,
    frames_since_change,
    synthetic_held_out,
)
from actionstream.training.frame_cache import ClipCache, file_digest
from actionstream.training.model import Recognizer
from actionstream.training.synth import LABELS, SynthConfig
from actionstream.training.videos import MIN_CLIP_FRAMES, load_dataset

if TYPE_CHECKING:
    from actionstream.training.checkpoint import Checkpoint

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


def switch_latency(
    preds: np.ndarray, labels: np.ndarray, cuts: np.ndarray | None = None
) -> dict[str, Any]:
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
    return {
        "changes": changes,
        "followed": len(latencies),
        "missed": missed,
        "mean_frames": float(np.mean(latencies)) if latencies else None,
        "median_frames": float(np.median(latencies)) if latencies else None,
    }


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


def clip_report(preds: np.ndarray, truth: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Top-1, per-class accuracy and the confusion matrix (rows: truth, columns: predicted)."""
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (truth, preds), 1)
    per_class = {
        name: float(confusion[k, k] / confusion[k].sum())
        for k, name in enumerate(names)
        if confusion[k].sum()
    }
    return {
        "clip_accuracy": float((preds == truth).mean()),
        "clips": len(truth),
        "per_class_clip_accuracy": per_class,
        "confusion": confusion.tolist(),
    }


def _trained_on(run: Path, trained_videos: Sequence[str], digests: list[str]) -> int:
    """How many of the clips to score are of video files the run trained on (not those
    it held out), byte for byte and under any name; warns when any are, since their
    scores are not held-out scores. A clip counts when its file was trained on, whatever
    span of it: frames next to trained ones are not unseen either."""
    trained = set(trained_videos)
    seen = sum(digest in trained for digest in digests)
    if seen:
        which = (
            "this video is one"
            if len(digests) == 1
            else f"{seen} of these {len(digests)} clips are of videos"
        )
        print(
            f"warning: {which} {run} was trained on (the same bytes): its scores here count "
            "what it learnt from, not only what it has not seen",
            file=sys.stderr,
        )
    return seen


@dataclass(frozen=True)
class Predicted:
    """A model's predictions on one source of data, with the truth to score them against."""

    about: dict[str, Any]  # what evaluation.json says of the data, in the order it says it
    frames: np.ndarray  # (N, T) predicted label of every frame of unbroken streams
    truth: np.ndarray  # (N, T) their labels
    cuts: np.ndarray | None  # (N, T) as Streams holds them
    # Each isolated clip's predicted label and its own, (M,) each; None for one video.
    clips: tuple[np.ndarray, np.ndarray] | None


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """`actionstream evaluate`: prints the metrics (as JSON, alone on stdout; what else it
    says goes to stderr), writes evaluation.json and plots."""
    from actionstream.training.checkpoint import Checkpoint
    from actionstream.training.report import write_report
    from actionstream.training.run_folder import writable

    if cfg.out is not None:  # before any scoring: its report would have nowhere to go
        writable(Path(cfg.out), "the output folder")
    run = Path(cfg.run)
    ckpt = Checkpoint.load(run)
    net = ckpt.build_model()
    names = ckpt.labels
    if cfg.data is None:
        got = _on_synthetic(net, ckpt, cfg, run)
    elif (labels_csv := _labels_csv(cfg)) is not None:
        got = _on_labelled_video(net, ckpt, Path(cfg.data), Path(labels_csv), cfg, run)
    else:
        got = _on_clips(net, ckpt, Path(cfg.data), cfg, run)
    metrics: dict[str, Any] = {"model": ckpt.version, "labels": list(names), **got.about}
    if got.clips is not None:
        metrics |= clip_report(*got.clips, names)
    settle = int(SETTLE_SECONDS * ckpt.fps)
    metrics |= asdict(stream_metrics(got.frames, got.truth, names, settle, got.cuts))
    metrics["switch_latency"] = switch_latency(got.frames, got.truth, got.cuts)
    # What produced these scores; a video's labels, the CSV they came from.
    metrics["config"] = resolved(cfg, labels=_labels_csv(cfg))
    out = None if cfg.out is None else Path(cfg.out)
    written = write_report(run if run.is_dir() else run.parent, metrics, names, out)
    print(json.dumps(metrics, indent=2))
    _tell("wrote " + ", ".join(str(p) for p in written))
    return metrics


def _on_synthetic(net: Recognizer, ckpt: Checkpoint, cfg: EvaluateConfig, run: Path) -> Predicted:
    """Held-out synthetic streams and clips at the model's size and rate."""
    if tuple(ckpt.labels) != LABELS:
        raise DatasetError(
            f"{run} was trained on other labels than the synthetic world's "
            f"({', '.join(ckpt.labels)}): give --data with videos it has not seen (class "
            "folders, a manifest, or one video with a frame,label CSV)"
        )
    synth = SynthConfig(size=ckpt.model_config.height, fps=ckpt.fps)
    n_frames = int(cfg.seconds * ckpt.fps)
    streams, clips = synthetic_held_out(synth, cfg.streams, n_frames, cfg.seed, cfg.seed)
    truth = np.array([c.label for c in clips])
    return Predicted(
        about={"data": f"synthetic, {cfg.streams} streams of {cfg.seconds:g} s, seed {cfg.seed}"},
        frames=predict_streams(net, streams),
        truth=streams.labels,
        cuts=streams.cuts,
        clips=(clip_predictions(net, clips), truth),
    )


def _on_labelled_video(
    net: Recognizer, ckpt: Checkpoint, video: Path, labels_csv: Path, cfg: EvaluateConfig, run: Path
) -> Predicted:
    """One untrimmed video, labelled per frame by its CSV: one stream, no isolated clips."""
    prep = Preprocessing(ckpt.model_config.height, ckpt.fps)
    streams = _labelled_video(video, labels_csv, ckpt.labels, prep, beside=cfg.labels is None)
    about = {
        "data": str(video.resolve()),  # the file says where, from anywhere
        "trained_on_clips": _trained_on(run, ckpt.trained_videos, [file_digest(video)]),
    }
    return Predicted(about, predict_streams(net, streams), streams.labels, streams.cuts, None)


def _on_clips(
    net: Recognizer, ckpt: Checkpoint, data: Path, cfg: EvaluateConfig, run: Path
) -> Predicted:
    """Class folders or a manifest: every clip on its own, and all of them one after another
    (in an order `cfg.seed` draws) as one unbroken stream."""
    prep = Preprocessing(ckpt.model_config.height, ckpt.fps)
    dataset = load_dataset(
        find_clips(data, _tell),
        ClipCache(Path(cfg.cache), prep),
        MIN_CLIP_FRAMES,
        report=_tell,
        known=ckpt.labels,
    )
    clips = [LabelledClip(c.frames, t) for c, t in zip(dataset.clips, dataset.targets, strict=True)]
    order = [int(i) for i in np.random.default_rng(cfg.seed).permutation(len(clips))]
    # All clips, one unbroken stream, scored clip by clip: never joined in memory.
    joined = [clips[i] for i in order]
    labels = np.concatenate([np.full(len(c.frames), c.label, np.int64) for c in joined])  # (T,)
    frames = predict_joined(net, joined)
    # Each clip's first frame: two clips of one label in a row are two actions.
    cuts = np.concatenate([np.arange(len(c.frames)) == 0 for c in joined])  # (T,)
    about = {
        "data": str(data.resolve()),  # the file says where, from anywhere
        "skipped": list(dataset.skipped),
        "trained_on_clips": _trained_on(
            run, ckpt.trained_videos, [c.digest for c in dataset.clips]
        ),
    }
    truth = np.array([c.label for c in clips])
    return Predicted(
        about,
        frames[None],  # (T,) -> (1, T)
        labels[None],  # (T,) -> (1, T)
        cuts[None],  # (T,) -> (1, T)
        (clip_predictions(net, clips), truth),
    )


def _tell(line: str) -> None:
    print(line, file=sys.stderr)


def _labels_csv(cfg: EvaluateConfig) -> str | None:
    """The frame,label CSV of a --data video (by default beside it, of its name); None for
    other data, which carries its labels."""
    if cfg.data is None or Path(cfg.data).suffix.lower() not in VIDEO_SUFFIXES:
        return None
    return cfg.labels or str(Path(cfg.data).with_suffix(".csv"))


def _labelled_video(
    video: Path, csv_path: Path, names: Sequence[str], prep: Preprocessing, beside: bool
) -> Streams:
    """One untrimmed video as a stream, labelled from its `frame,label` CSV (source frames),
    `beside` it by default (no --labels given)."""
    try:
        by_frame = read_frame_labels(csv_path)
    except LabelsError as e:
        # A user who never named a CSV is told where it was looked for and how to name one.
        unfound = beside and not csv_path.is_file()
        hint = f" (looked for beside {video}): give its labels with --labels FILE"
        raise DatasetError(f"{e}{hint if unfound else ''}") from None
    unknown = sorted(set(by_frame.values()) - set(names))
    if unknown:
        raise DatasetError(
            f"{csv_path}: label(s) {', '.join(map(repr, unknown))} are not the model's"
        )
    taken = decode_counted(
        ClipRef(video, "video"), prep, lambda note: _tell(f"warning: {video}: {note}")
    )
    missing = sorted({int(i) for i in taken.sources} - set(by_frame))
    if missing:
        raise DatasetError(f"{csv_path}: no label for source frame(s) {missing[:5]}...")
    # Rows for frames the video does not have score nothing: said, since a CSV for
    # another (longer) cut of the video would otherwise pass unnoticed.
    past = sorted(f for f in by_frame if f >= taken.read)
    if past:
        _tell(
            f"warning: {csv_path}: {len(past)} row(s) past the last frame of {video} "
            f"(frame {taken.read - 1}), from frame {past[0]}, left out of the scores"
        )
    labels = np.array([names.index(by_frame[int(i)]) for i in taken.sources])
    return Streams(taken.frames[None], labels[None])  # (1, T, H, W, 3), (1, T)
