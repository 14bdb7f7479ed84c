"""Data-parallel training under torchrun: two real processes, gloo over loopback."""

from __future__ import annotations

import csv
import json
import math
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
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 2  # 2 epochs, written by the leader alone
    # 32 streams in batches of 8, split over 2 processes: 2 batches a process, each
    # of 40 frames in 2 chunks of 20 (--bptt): 4 steps an epoch.
    assert [row["steps"] for row in rows] == ["4", "4"]


def _decide(rank: int, store: str, own: list[tuple[float, int]], out: str) -> None:
    import torch.distributed as dist

    from actionstream.training.distributed import Team
    from actionstream.training.train import _over_the_team

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        loss, counted = _over_the_team(*own[rank], Team(rank=rank, size=2))
        Path(f"{out}.{rank}").write_text(json.dumps([None if math.isnan(loss) else loss, counted]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    ("own", "expected"),
    [
        # One process's share had no frame to count: the team's loss is the other's.
        ([(0.5, 10), (math.nan, 0)], [0.5, 10]),
        # Weighted by frames; a process that diverged makes it NaN for every process.
        ([(1.0, 10), (4.0, 30)], [3.25, 40]),
        ([(1.0, 10), (math.nan, 30)], [None, 40]),
    ],
)
def test_every_process_decides_on_the_teams_loss(
    tmp_path: Path,
    own: list[tuple[float, int]],
    expected: list[float | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each process decided on its own loss: one whose share had no counted frame stopped
    # the whole run, and the leader's message could blame the wrong setting.
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only, as the torchrun test
    out = str(tmp_path / "decided")
    mp.spawn(_decide, args=(str(tmp_path / "store"), own, out), nprocs=2)
    assert json.loads(Path(f"{out}.0").read_text()) == expected
    assert json.loads(Path(f"{out}.1").read_text()) == expected
