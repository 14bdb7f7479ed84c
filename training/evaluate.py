"""Scoring a recogniser the way the service runs it: one unbroken stream, state
never reset, a prediction for every frame; and isolated clips from a zero state.

`score` is the project's one evaluation recipe: training scores its validation
streams with it after every epoch, `actionstream evaluate` scores a checkpoint.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from actionstream.training.config import EvaluateConfig
from actionstream.training.data import Streams, frames_since_change, render_streams
from actionstream.training.model import Recognizer
from actionstream.training.synth import LABELS, SynthConfig, render_clip

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


def stream_metrics(preds: np.ndarray, labels: np.ndarray, settle: int) -> dict[str, Any]:
    """Per-frame accuracy overall, after `settle` frames into each action, and per class."""
    correct = preds == labels
    settled = frames_since_change(labels) >= settle
    per_class = {
        name: float(correct[labels == k].mean())
        for k, name in enumerate(LABELS)
        if (labels == k).any()
    }
    return {
        "frame_accuracy": float(correct.mean()),
        "settled_frame_accuracy": float(correct[settled].mean()),
        "settle_frames": settle,
        "per_class_frame_accuracy": per_class,
        "frames": int(labels.size),
    }


@torch.no_grad()
def clip_accuracy(
    net: Recognizer, per_class: int, n_frames: int, seed: int, cfg: SynthConfig
) -> float:
    """Isolated clips from a zero state, judged on their last frame."""
    net.eval()
    correct = 0
    for k, label in enumerate(LABELS):
        clips = np.stack(
            [render_clip(label, n_frames, seed + 7919 * k + i, cfg) for i in range(per_class)]
        )
        x = torch.from_numpy(clips).to(next(net.parameters()).device)  # (P, T, H, W, 3)
        logits, *_ = net(x, *net.initial_state(per_class))
        correct += int((logits[:, -1].argmax(-1) == k).sum())
    return correct / (per_class * len(LABELS))


def score(net: Recognizer, streams: Streams, clip_seed: int, synth: SynthConfig) -> dict:
    """Per-frame metrics on `streams` plus clip accuracy on freshly rendered clips."""
    metrics = stream_metrics(
        predict_streams(net, streams), streams.labels, settle=int(SETTLE_SECONDS * synth.fps)
    )
    clip_frames = int(CLIP_SECONDS * synth.fps)
    metrics["clip_accuracy"] = clip_accuracy(net, CLIPS_PER_CLASS, clip_frames, clip_seed, synth)
    return metrics


def main(cfg: EvaluateConfig) -> dict[str, Any]:
    """`actionstream evaluate`: prints the metrics as JSON and returns them."""
    from pathlib import Path

    from actionstream.training.checkpoint import Checkpoint

    ckpt = Checkpoint.load(Path(cfg.run))
    net = ckpt.build_model()
    synth = SynthConfig(size=ckpt.model_config.height, fps=ckpt.fps)
    data = render_streams(cfg.streams, int(cfg.seconds * ckpt.fps), cfg.seed, synth, held_out=True)
    metrics = score(net, data, cfg.seed, synth)
    print(json.dumps(metrics, indent=2))
    return metrics
