"""The files of a run folder, by name: what `train` writes there and `evaluate`,
`export` and the command line read. Without torch, so that the command line can
say what a stopped run left without loading it.
"""

from __future__ import annotations

import json
from pathlib import Path

# A run's model: its best epoch so far, what `evaluate` and `export` read.
CHECKPOINT = "checkpoint.pt"
# Checkpoint.save's readable copy of CHECKPOINT: all of it but the weights.
CHECKPOINT_CARD = "checkpoint.json"
# A run's progress after its last finished epoch, what `--resume` goes on from (no model).
PROGRESS = "last.pt"
# The run's settings, paths absolute: what --resume starts from.
TRAIN_CONFIG = "train_config.json"
# A row per epoch: its loss and validation scores (EpochLog), which report.py plots.
METRICS = "metrics.csv"
# What `actionstream evaluate` scored, in the run folder unless told another.
EVALUATION = "evaluation.json"
# The plots `evaluate` draws beside EVALUATION (report.py).
CONFUSION_PLOT = "confusion.png"
PER_CLASS_PLOT = "per_class_accuracy.png"
CURVES_PLOT = "training_curves.png"
# Held by the run training in the folder (RunLock).
LOCK = "train.lock"


def remove_evaluation(run: Path) -> list[str]:
    """Removes what `evaluate` wrote in the run folder, for a model `run` no longer holds;
    returns the names of the files it removed."""
    removed = []
    for name in (EVALUATION, CONFUSION_PLOT, PER_CLASS_PLOT, CURVES_PLOT):
        path = run / name
        if path.is_file():
            path.unlink()
            removed.append(name)
    return removed


def best_epoch(run: Path) -> int | None:
    """The epoch the run's checkpoint holds, its best so far, as its CHECKPOINT_CARD says;
    None when there is no card to read, or it says no epoch."""
    try:
        epoch = json.loads((run / CHECKPOINT_CARD).read_text())["eval_metrics"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return epoch if isinstance(epoch, int) else None
