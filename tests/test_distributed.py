"""Data-parallel training under torchrun: two real processes, gloo over loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_torchrun_trains_with_two_processes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from actionstream.training.checkpoint import Checkpoint

    run = tmp_path / "run"
    done = subprocess.run(
        [
            *(str(Path(sys.executable).parent / "torchrun"), "--standalone"),
            *("--nproc-per-node", "2", "-m", "actionstream", "train", "--out", str(run)),
            *("--train-streams", "32", "--stream-frames", "40", "--bptt", "20"),
            *("--batch-size", "8", "--val-streams", "4", "--val-frames", "60", "--epochs", "2"),
            *("--size", "32", "--channels", "8,16", "--hidden", "16", "--embed", "16"),
            *("--threads", "1", "--init", "scratch"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # Both processes on loopback, one thread each: the test runs on 2 cores.
        env={**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "data-parallel over 2 processes" in out
    assert out.count("saved ") == 1  # the leader saves, once
    ckpt = Checkpoint.load(run)
    assert ckpt.eval_metrics["processes"] == 2
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs, written by the leader alone
    # 32 streams in batches of 8, split over 2 processes, 2 chunks each, 2 epochs.
    assert "8/8" in done.stderr
