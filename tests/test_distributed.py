"""Data-parallel training under torchrun: two real processes, gloo over loopback."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
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


# Each case: the two processes' own (loss, counted frames), and what both must decide.
TEAM_LOSSES = [
    # One process's share had no frame to count: the team's loss is the other's.
    ([(0.5, 10), (math.nan, 0)], [0.5, 10]),
    # Weighted by frames; a process that diverged makes it NaN for every process.
    ([(1.0, 10), (4.0, 30)], [3.25, 40]),
    ([(1.0, 10), (math.nan, 30)], [None, 40]),
]


def _decide(rank: int, store: str, owns: list[list[tuple[float, int]]], out: str) -> None:
    import torch.distributed as dist

    from actionstream.training.distributed import Team
    from actionstream.training.train import _over_the_team

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        decided = []
        for own in owns:  # one after another, as a run's epochs are
            loss, counted = _over_the_team(*own[rank], Team(rank=rank, size=2))
            decided.append([None if math.isnan(loss) else loss, counted])
        Path(f"{out}.{rank}").write_text(json.dumps(decided))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def decided(tmp_path_factory: pytest.TempPathFactory) -> list[list[list[float | None]]]:
    """What each of two processes decided in every case of TEAM_LOSSES, [rank][case]: one
    team for them all, since each process starts by importing torch."""
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    folder = tmp_path_factory.mktemp("decided")
    out = str(folder / "decided")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only, as the torchrun test
        owns = [own for own, _ in TEAM_LOSSES]
        mp.spawn(_decide, args=(str(folder / "store"), owns, out), nprocs=2)
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("case", range(len(TEAM_LOSSES)))
def test_every_process_decides_on_the_teams_loss(
    decided: list[list[list[float | None]]], case: int
) -> None:
    # Each process decided on its own loss: one whose share had no counted frame stopped
    # the whole run, and the leader's message could blame the wrong setting.
    expected = TEAM_LOSSES[case][1]
    assert decided[0][case] == expected
    assert decided[1][case] == expected


def _load(rank: int, store: str, cache: str, out: str, fail: bool) -> None:
    import torch.distributed as dist

    from actionstream.training.distributed import Team
    from actionstream.training.errors import TrainingError

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)

    def load() -> str:  # as a data set's first load: slow, and it fills the cache
        if Path(cache).exists():
            return "read the cache"
        if fail:
            raise TrainingError("no videos in videos/")
        time.sleep(0.5)
        Path(cache).write_text("decoded")
        return "decoded"

    try:
        said = Team(rank=rank, size=2, local_rank=rank).local_first(load)
    except TrainingError as e:
        said = f"error: {e}"
    finally:
        dist.destroy_process_group()
    Path(f"{out}.{rank}").write_text(said)


@pytest.mark.parametrize("fail", [False, True])
def test_one_process_a_machine_decodes_the_data_and_a_failure_ends_every_process(
    tmp_path: Path, fail: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every process decoded the whole data set at once, each the same videos into the
    # same cache: on one machine, the first load's time and CPU times the processes.
    pytest.importorskip("torch")
    import torch.multiprocessing as mp

    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    out = str(tmp_path / "said")
    args = (str(tmp_path / "store"), str(tmp_path / "cache"), out, fail)
    mp.spawn(_load, args=args, nprocs=2)
    said = [Path(f"{out}.{rank}").read_text() for rank in (0, 1)]
    if fail:  # the second process does not wait for the first forever
        assert said[0] == "error: no videos in videos/"
        assert said[1].startswith("error: another training process could not get the data")
    else:
        assert said == ["decoded", "read the cache"]
