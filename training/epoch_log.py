"""metrics.csv: a run's row per epoch."""

from __future__ import annotations

import csv
from pathlib import Path

from actionstream.training.scoring import Scores

# Validation numbers written to metrics.csv after every epoch: the Scores that EpochLog.row
# writes, by name (report.py plots them by these).
LOGGED = ("frame_accuracy", "settled_frame_accuracy", "clip_accuracy")
# metrics.csv's columns; lr and beta1 are where the schedule stands after the epoch.
HEADER = ["epoch", "seconds", "train_loss", *LOGGED, "steps", "lr", "beta1"]


class EpochLog:
    """metrics.csv: a row per epoch, written as it comes, so a killed run keeps its log."""

    def __init__(self, path: Path, rows: list[list[str]]) -> None:
        """Starts the file with `rows` (those of a resumed run's finished epochs; a run
        begun before the schedule's columns were logged has empty cells there)."""
        self._path = path
        self.rows = [row + [""] * (len(HEADER) - len(row)) for row in rows]
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([HEADER, *self.rows])

    def row(
        self,
        epoch: int,
        seconds: float,
        loss: float,
        scores: Scores,
        steps: int,
        schedule: tuple[float, float],
    ) -> list[str]:
        """`steps`: the optimiser steps the epoch took, fewer in an epoch --minutes cut
        short; `schedule`: AdamW's learning rate and beta1 after its last step."""
        logged = (scores.frame_accuracy, scores.settled_frame_accuracy, scores.clip_accuracy)
        # An empty cell where no frame was settled: "None" is no number a CSV reader knows.
        cells = ["" if v is None else str(v) for v in logged]
        lr, beta1 = schedule
        return [
            str(epoch),
            f"{seconds:.1f}",
            f"{loss:.4f}",
            *cells,
            str(steps),
            f"{lr:.6g}",
            f"{beta1:.6g}",
        ]

    def write(self, row: list[str]) -> None:
        self.rows.append(row)
        with self._path.open("a", newline="") as f:
            csv.writer(f).writerow(row)
