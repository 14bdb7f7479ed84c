"""Scoring a recogniser the way the service runs it: one unbroken stream, state
never reset, a prediction for every frame; and isolated clips from a zero state.

`score` is the project's one evaluation recipe: training scores its validation
streams with it after every epoch, `actionstream evaluate` scores a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from actionstream.training.config import EvaluateConfig
from actionstream.training.data import (
    LabelledClip,
    Streams,
    frames_since_change,
    render_streams,
    synthetic_clips,
)
from actionstream.training.model import Recognizer
from actionstream.training.synth import SynthConfig

# A frame is "settled" once its action has run this long: before that, the
# network has not yet seen enough of the new motion (and neither could anyone).
SETTLE_SECONDS = 1.0
# Isolated clips: this many per class, this long, judged on their last frame.
CLIPS_PER_CLASS = 20
CLIP_SECONDS = 2.0


@torch.no_grad()
def predict_streams(net: Recognizer, streams: Streams, chunk: int = 100) -> np.ndarray:
    """Per-frame predicted label index (N, T), state carried across the whole stream."""
    net.eval()
    device = next(net.parameters()).device
    n, total = streams.labels.shape
    state = net.initial_state(n)
    preds = []
    for t0 in range(0, total, chunk):
        x = torch.from_numpy(streams.frames[:, t0 : t0 + chunk]).to(device)  # (N, K, H, W, 3)
        logits, *state = net(x, *state)  # (N, K, classes)
        preds.append(logits.argmax(-1).cpu().numpy())
    return np.concatenate(preds, axis=1)


def stream_metrics(
    preds: np.ndarray, labels: np.ndarray, names: Sequence[str], settle: int
) -> dict[str, Any]:
    """Per-frame accuracy overall, after `settle` frames into each action, and per class."""
    correct = preds == labels
    settled = frames_since_change(labels) >= settle
    per_class = {
        name: float(correct[labels == k].mean())
        for k, name in enumerate(names)
        if (labels == k).any()
    }
    return {
        "frame_accuracy": float(correct.mean()),
        "settled_frame_accuracy": float(correct[settled].mean()) if settled.any() else 0.0,
        "settle_frames": settle,
        "per_class_frame_accuracy": per_class,
        "frames": int(labels.size),
    }


@torch.no_grad()
def clip_accuracy(net: Recognizer, clips: Sequence[LabelledClip], batch: int = 64) -> float:
    """Isolated clips, each from a zero state, judged on their last frame."""
    net.eval()
    device = next(net.parameters()).device
    by_length: dict[int, list[LabelledClip]] = {}
    for clip in clips:  # clips of one length run as one batch
        by_length.setdefault(len(clip.frames), []).append(clip)
    correct = 0
    for group in by_length.values():
        for b0 in range(0, len(group), batch):
            part = group[b0 : b0 + batch]
            x = torch.from_numpy(np.stack([np.asarray(c.frames) for c in part])).to(device)
            logits, *_ = net(x, *net.initial_state(len(part)))  # (P, T, classes)
            guess = logits[:, -1].argmax(-1).cpu().numpy()
            correct += int((guess == np.array([c.label for c in part])).sum())
    return correct / len(clips)


def score(
    net: Recognizer,
    streams: Streams,
    clips: Sequence[LabelledClip],
    names: Sequence[str],
    fps: float,
) -> dict[str, Any]:
    """Per-frame metrics on unbroken `streams`, plus accuracy on isolated `clips`."""
    preds = predict_streams(net, streams)
    metrics = stream_metrics(preds, streams.labels, names, settle=int(SETTLE_SECONDS * fps))
    metrics["clip_accuracy"] = clip_accuracy(net, clips)
    return metrics


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """`actionstream evaluate`: prints the metrics as JSON and returns them."""
    from pathlib import Path

    from actionstream.training.checkpoint import Checkpoint

    ckpt = Checkpoint.load(Path(cfg.run))
    net = ckpt.build_model()
    synth = SynthConfig(size=ckpt.model_config.height, fps=ckpt.fps)
    data = render_streams(cfg.streams, int(cfg.seconds * ckpt.fps), cfg.seed, synth, held_out=True)
    clips = synthetic_clips(synth, CLIPS_PER_CLASS, int(CLIP_SECONDS * ckpt.fps), cfg.seed)
    metrics = score(net, data, clips, ckpt.labels, ckpt.fps)
    print(json.dumps(metrics, indent=2))
    return metrics
