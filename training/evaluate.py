"""Scoring a recogniser the way the service runs it: one unbroken stream, state
never reset, a prediction for every frame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actionstream.training.data import Streams, render_streams
from actionstream.training.model import ActionRecognizer
from actionstream.training.synth import LABELS, SynthConfig, render_clip


@torch.no_grad()
def predict_streams(net: ActionRecognizer, streams: Streams, chunk: int = 100) -> np.ndarray:
    """Per-frame predicted label index (N, T), state carried across the whole stream."""
    net.eval()
    n, total = streams.labels.shape
    h, prev = net.initial_state(n)
    preds = []
    for t0 in range(0, total, chunk):
        x = torch.from_numpy(streams.frames[:, t0 : t0 + chunk])  # (N, K, H, W, 3)
        logits, h, prev = net(x, h, prev)  # (N, K, classes)
        preds.append(logits.argmax(-1).numpy())
    return np.concatenate(preds, axis=1)


def stream_metrics(preds: np.ndarray, labels: np.ndarray, settle: int) -> dict[str, Any]:
    """Per-frame accuracy overall, after `settle` frames into each action, and per class."""
    correct = preds == labels
    since = np.zeros_like(labels)
    for t in range(1, labels.shape[1]):
        since[:, t] = np.where(labels[:, t] != labels[:, t - 1], 0, since[:, t - 1] + 1)
    since[:, 0] = 0
    settled = since >= settle
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
    net: ActionRecognizer, per_class: int, n_frames: int, seed: int, cfg: SynthConfig
) -> float:
    """Isolated clips from a zero state, judged on their last frame."""
    net.eval()
    correct = 0
    for k, label in enumerate(LABELS):
        clips = np.stack(
            [render_clip(label, n_frames, seed + 7919 * k + i, cfg) for i in range(per_class)]
        )
        x = torch.from_numpy(clips)  # (P, T, H, W, 3)
        logits, _, _ = net(x, *net.initial_state(per_class))
        correct += int((logits[:, -1].argmax(-1) == k).sum())
    return correct / (per_class * len(LABELS))


def main(run: Path, streams: int, seconds: float, seed: int) -> int:
    from actionstream.training.checkpoint import Checkpoint

    ckpt = Checkpoint.load(run)
    net = ckpt.build_model()
    cfg = SynthConfig(size=ckpt.model_config.height, fps=ckpt.fps)
    data = render_streams(streams, int(seconds * ckpt.fps), seed, cfg, held_out=True)
    metrics = stream_metrics(predict_streams(net, data), data.labels, settle=int(ckpt.fps))
    metrics["clip_accuracy"] = clip_accuracy(net, 20, int(2 * ckpt.fps), seed, cfg)
    print(json.dumps(metrics, indent=2))
    return 0
