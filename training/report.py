"""What `actionstream evaluate` leaves in a run folder: evaluation.json and PNG plots.

Plots are drawn with matplotlib's file-only backend (no display needed):
the confusion matrix and per-class accuracy of the scored clips, and the
training curves from the run's metrics.csv.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, no display
import matplotlib.pyplot as plt
import numpy as np

from actionstream.training.run_files import (
    CONFUSION_PLOT,
    CURVES_PLOT,
    EVALUATION,
    METRICS,
    PER_CLASS_PLOT,
)


def write_report(
    run: Path, metrics: dict[str, Any], names: Sequence[str], out: Path | None = None
) -> list[Path]:
    """Writes evaluation.json and whichever plots the metrics allow into `out` (default:
    the run folder `run`), with the run's training curves; returns their paths. A plot
    this evaluation cannot draw is removed: an earlier evaluation's (of other data)
    would otherwise sit beside it as if it were this one's."""
    curves_from = run / METRICS
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        run = out
    written = [run / EVALUATION]
    written[0].write_text(json.dumps(metrics, indent=2) + "\n")
    confusion, per_class_png = run / CONFUSION_PLOT, run / PER_CLASS_PLOT
    confusion.unlink(missing_ok=True)
    per_class_png.unlink(missing_ok=True)
    if "confusion" in metrics:
        written.append(_confusion(confusion, np.array(metrics["confusion"]), names))
    per_class = metrics.get("per_class_clip_accuracy") or metrics.get("per_class_frame_accuracy")
    if per_class:
        written.append(_per_class(per_class_png, per_class))
    if curves_from.is_file():
        written.append(_curves(run / CURVES_PLOT, curves_from))
    return written


def _confusion(path: Path, confusion: np.ndarray, names: Sequence[str]) -> Path:
    # At least wide enough for the title, however few the labels.
    side = 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.2 + side), max(3.5, 1 + side)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = confusion.max() or 1
    for (i, j), n in np.ndenumerate(confusion):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_title("clips: true label against prediction")
    return _save(fig, path)


def _per_class(path: Path, per_class: dict[str, float]) -> Path:
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(per_class), 3.5))
    ax.bar(list(per_class), [100 * v for v in per_class.values()], color="tab:blue")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy, %")
    ax.tick_params(axis="x", rotation=45)
    ax.set_title("accuracy per class")
    return _save(fig, path)


def _curves(path: Path, metrics_csv: Path) -> Path:
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_ax.plot(epochs, [float(r["train_loss"]) for r in rows], marker="o")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    for key, label in (
        ("frame_accuracy", "per frame"),
        ("settled_frame_accuracy", "settled"),
        ("clip_accuracy", "clips"),
    ):
        acc_ax.plot(epochs, [_percent(r[key]) for r in rows], marker="o", label=label)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("held-out accuracy, %")
    acc_ax.set_ylim(0, 100)
    acc_ax.legend()
    return _save(fig, path)


def _percent(cell: str) -> float:
    """A metrics.csv accuracy in %; NaN (a gap in the line) for an empty cell, an epoch
    with no frame settled long enough to score."""
    return 100 * float(cell) if cell else math.nan


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
