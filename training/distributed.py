"""Data-parallel training across processes started by `torchrun`.

    torchrun --standalone --nproc-per-node 2 -m actionstream train --data videos/ --out runs/ddp

Each process trains a replica on its own share of every epoch's batches;
DistributedDataParallel averages the gradients (gloo on CPUs, NCCL on GPUs),
so the replicas stay identical. Only the leader (rank 0) validates, logs and
saves. Without torchrun's environment it is one process and none of this runs.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from actionstream.training.errors import TrainingError

_CPU = torch.device("cpu")
T = TypeVar("T")


@dataclass(frozen=True)
class Team:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    # Where collectives run: NCCL takes CUDA tensors only.
    device: torch.device = _CPU
    local_rank: int = 0  # among the processes on this machine (torchrun's LOCAL_RANK)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def agree(self, flag: bool) -> bool:
        """True on every process when it is true on any (to stop together, never hang)."""
        if self.size == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def total(self, values: list[float]) -> list[float]:
        """Each of `values` summed over every process (each must call this at the same
        point)."""
        if self.size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return [float(v) for v in t.tolist()]

    def share(self, obj: T) -> T:
        """The leader's `obj` on every process (each must call this at the same point)."""
        if self.size == 1:
            return obj
        objs = [obj]
        dist.broadcast_object_list(objs, src=0, device=self.device)
        return objs[0]

    def local_first(self, work: Callable[[], T]) -> T:
        """`work()` on each machine's first process, then on the rest of its processes:
        what the first caches there (decoded videos) the others read instead of making it
        again. A failure in a first process ends the others too, which would otherwise
        wait for it forever; each process must call this at the same point."""
        if self.size == 1:
            return work()
        first = self.local_rank == 0
        done: T | None = None
        failure: Exception | None = None
        if first:
            try:
                done = work()
            except Exception as e:  # raised below, once the others know
                failure = e
        failed = self.agree(failure is not None)
        if failure is not None:
            raise failure
        if failed:
            raise TrainingError(
                "another training process could not get the data ready; its error says why"
            )
        return done if first else work()  # type: ignore[return-value]

    def wait(self) -> None:
        """Until every process is here (while the leader validates, say)."""
        if self.size > 1:
            dist.barrier()


def join(device: torch.device) -> tuple[Team, torch.device]:
    """Joins the process group torchrun set up, if it did; CUDA processes take a GPU each."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return Team(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    return Team(dist.get_rank(), dist.get_world_size(), device, local_rank), device


def leave(team: Team, finished: bool) -> None:
    """Leaves the process group; after a finished run, together with the others.

    A process that tore its group down while the leader was still saving, or
    left the DistributedDataParallel wrapper (a reference cycle) for the
    interpreter's final clean-up, could abort in gloo's threads at exit
    ("terminate called without an active exception"): so every process waits
    for the rest, frees the wrapper while the group is alive, then destroys it.
    After a failure no process waits: the others may never arrive.
    """
    if team.size == 1:
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
