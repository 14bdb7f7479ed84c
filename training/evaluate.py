"""`actionstream evaluate`: a checkpoint scored on held-out data, synthetic streams,
a user's clips or one labelled video, with the recipe training scores its epochs by
(scoring.py); writes evaluation.json and plots (report.py).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from actionstream.frame_labels import LabelsError, read_frame_labels
from actionstream.settings import resolved
from actionstream.training.checkpoint import Checkpoint
from actionstream.training.clip_decode import decode_counted
from actionstream.training.clip_sources import find_clips
from actionstream.training.clips import ClipRef, DatasetError, Preprocessing
from actionstream.training.config import VIDEO_SUFFIXES, EvaluateConfig
from actionstream.training.data import LabelledClip, Streams, synthetic_held_out
from actionstream.training.frame_cache import ClipCache, file_digest
from actionstream.training.model import Recognizer
from actionstream.training.report import write_report
from actionstream.training.run_folder import writable
from actionstream.training.scoring import (
    SETTLE_SECONDS,
    clip_predictions,
    clip_report,
    predict_joined,
    predict_streams,
    stream_metrics,
    switch_latency,
)
from actionstream.training.synth import LABELS, SynthConfig
from actionstream.training.videos import MIN_CLIP_FRAMES, load_dataset


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
        metrics |= asdict(clip_report(*got.clips, names))
    settle = int(SETTLE_SECONDS * ckpt.fps)
    metrics |= asdict(stream_metrics(got.frames, got.truth, names, settle, got.cuts))
    metrics["switch_latency"] = asdict(switch_latency(got.frames, got.truth, got.cuts))
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
