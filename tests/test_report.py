"""What `evaluate` leaves in a run folder: this evaluation's report, nothing of an earlier one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from actionstream.training.report import write_report


def test_a_plot_this_evaluation_cannot_draw_is_not_left_from_the_last(tmp_path: Path) -> None:
    names = ["left", "right"]
    clips = {
        "confusion": [[3, 1], [0, 4]],
        "per_class_clip_accuracy": {"left": 0.75, "right": 1.0},
    }
    written = write_report(tmp_path, clips, names)
    assert sorted(p.name for p in written) == [
        "confusion.png",
        "evaluation.json",
        "per_class_accuracy.png",
    ]
    # Then one long video with per-frame labels: no clips, so no confusion matrix.
    frames = {"per_class_frame_accuracy": {"left": 0.5, "right": 0.9}}
    written = write_report(tmp_path, frames, names)
    assert (
        sorted(p.name for p in tmp_path.iterdir())
        == sorted(p.name for p in written)
        == [
            "evaluation.json",
            "per_class_accuracy.png",
        ]
    )
    assert json.loads((tmp_path / "evaluation.json").read_text()) == frames
    write_report(tmp_path, {}, names)
    assert [p.name for p in tmp_path.iterdir()] == ["evaluation.json"]
