"""A run's progress after its last finished epoch (RUN/last.pt), for `--resume`: the
weights, optimiser, schedule, random generators, log and best epoch so far, and the
learning-rate cycle the run is in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actionstream.training.checkpoint import save_whole
from actionstream.training.config import TrainConfig
from actionstream.training.model import Recognizer
from actionstream.training.schedule import OneCycle


@dataclass(frozen=True)
class Cycle:
    """The learning-rate cycle a run is in (train.py's _schedule): the first from its
    start, and a new one from each --resume that changes --epochs or --minutes, begun
    where the run stands so that the rate does not jump."""

    # What it cools down by: the run's --epochs and --minutes when it began.
    epochs: int
    minutes: float
    # Where it began: the epochs finished, the optimiser steps and training seconds then,
    # and the learning rate then as a share of --lr, which it rises from (None for the
    # run's first cycle, which rises from --lr / 25).
    epoch: int = 0
    step: int = 0
    seconds: float = 0.0
    factor: float | None = None

    def runs(self, cfg: TrainConfig) -> bool:
        """Whether it is the cycle of a run with `cfg`'s length and time budget."""
        return (self.epochs, self.minutes) == (cfg.epochs, cfg.minutes)


@dataclass(kw_only=True)
class Progress:
    """last.pt: everything `--resume` needs to go on exactly as if the run had not stopped.

    On disk a dict of its fields, as last.pt was before it was typed: runs saved then
    resume, and Checkpoint.load tells the file from a checkpoint by its "optimizer".
    """

    epoch: int  # the last epoch finished (or cut short by --minutes)
    seconds: float  # training time up to its end
    inherited_videos: tuple[str, ...] = ()  # SHA-256 of the videos --init RUN learnt from
    # The clips (name and digest) and their sides, train or val, and their SHA-256; None
    # for the synthetic world, and in progress saved before runs recorded their data.
    data_fingerprint: str | None = None
    data_clips: tuple[tuple[str, str], ...] | None = None
    best: dict[str, Any]  # the best epoch's scores, with its "epoch"
    best_weights: dict[str, torch.Tensor]
    log: list[list[str]]  # metrics.csv's rows so far
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    # The schedule's state: restore reads back its step alone; cycle_on tells one saved
    # by torch's OneCycleLR (before runs had their own) by its total_steps.
    schedule: dict[str, Any]
    rng: Mapping[str, Any]  # numpy's, which orders the batches
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None = None  # a GPU draws its dropout masks from its own
    # None in progress saved before runs recorded it: then the first, by train_config.json.
    cycle: Cycle | None = None

    @classmethod
    def snapshot(
        cls,
        *,
        epoch: int,
        seconds: float,
        inherited_videos: tuple[str, ...],
        clip_sides: tuple[tuple[str, str], ...],
        best: dict[str, Any],
        best_weights: dict[str, torch.Tensor],
        log: list[list[str]],
        net: Recognizer,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        rng: np.random.Generator,
        device: torch.device,
        cycle: Cycle,
    ) -> Progress:
        """The run as it stands after `epoch`."""
        return cls(
            epoch=epoch,
            seconds=seconds,
            inherited_videos=inherited_videos,
            # What a resumed run must find again.
            data_fingerprint=data_fingerprint(clip_sides) if clip_sides else None,
            data_clips=clip_sides or None,
            best=best,
            best_weights=best_weights,
            log=log,
            weights=net.state_dict(),
            optimizer=opt.state_dict(),
            schedule=sched.state_dict(),
            rng=rng.bit_generator.state,
            torch_rng=torch.get_rng_state(),
            cuda_rng=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            cycle=cycle,
        )

    def save(self, path: Path) -> None:
        """Writes last.pt whole: a run killed while saving keeps the previous epoch's. Its
        fields by name, not asdict (which deep-copies every tensor); those that are None
        left out, as the progress saved before them has them."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.cycle is not None:  # plain values, which torch.load(weights_only) reads
            state["cycle"] = asdict(self.cycle)
        save_whole(path, {k: v for k, v in state.items() if v is not None})

    @classmethod
    def load(cls, path: Path) -> Progress:
        """Reads what `save` wrote; ValueError for a file that is not a run's progress."""
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises many unrelated types on damaged files
            raise ValueError(f"{path}: not a run's progress ({type(e).__name__})") from None
        if not isinstance(saved, dict):
            raise ValueError(f"{path} is not a run's progress")
        return cls.from_dict(saved)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Progress:
        """The progress in `saved`, as `save` leaves it; keys it does not know are ignored."""
        names = {f.name for f in fields(cls)}
        try:
            kept = {k: v for k, v in saved.items() if k in names}
            if isinstance(kept.get("cycle"), dict):
                kept["cycle"] = Cycle(**kept["cycle"])
            return cls(**kept)
        except TypeError as e:  # a field missing
            raise ValueError(f"not a run's progress ({e})") from None

    def restore(
        self,
        net: Recognizer,
        opt: torch.optim.Optimizer,
        sched: OneCycle,
        rng: np.random.Generator,
        device: torch.device,
    ) -> None:
        """Puts the weights, optimiser, schedule and random generators back as saved."""
        net.load_state_dict(self.weights)
        _restore_schedule(opt, sched, self.optimizer, self.schedule)
        rng.bit_generator.state = self.rng
        torch.set_rng_state(self.torch_rng)
        if device.type == "cuda" and self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, device)  # dropout's masks there


def _restore_schedule(
    opt: torch.optim.Optimizer,
    sched: OneCycle,
    optimizer: dict[str, Any],
    schedule: dict[str, Any],
) -> None:
    """The optimiser as saved, with the schedule and its rate and beta1 at the saved step.

    Only the step is carried, not the schedule's own state: the schedule is built anew
    for the cycle the run is in now, and its rate and beta1 follow from the step (and,
    under --minutes, from the clock, which counts the time saved). Set afresh there, a
    run in the same cycle goes on as it was; a new cycle starts at the rate it rises
    from, where the optimiser was saved holding the old cycle's next one; and last.pt
    saved under torch's LambdaLR (whose beta1 stayed at AdamW's 0.9) goes on with the
    beta1 its cycle has. Keys the saved parameter groups lack (saved under OneCycleLR
    or LambdaLR, which kept others) come from those built now.
    """
    kept = [dict(group) for group in opt.param_groups]
    opt.load_state_dict(optimizer)
    for group, before in zip(opt.param_groups, kept, strict=True):
        for key, value in before.items():
            group.setdefault(key, value)
    sched.go_to(schedule["last_epoch"])


def cycle_on(saved: Progress | None, cfg: TrainConfig) -> Cycle:
    """The learning-rate cycle the run trains in: a new run's first, a resumed run's own,
    or, when --resume changed --epochs or --minutes, a new one from where it stands: from
    its last finished epoch, its steps and time so far, and the rate it had reached."""
    if saved is None:
        return Cycle(cfg.epochs, cfg.minutes)
    if saved.cycle is not None and saved.cycle.runs(cfg):
        return saved.cycle
    group, schedule = saved.optimizer["param_groups"][0], saved.schedule
    reached = group["lr"] / cfg.lr
    if "total_steps" in schedule and schedule["last_epoch"] >= schedule["total_steps"]:
        # last.pt saved by torch's OneCycleLR, the first cycle's schedule before OneCycle:
        # one that ran all its steps left the optimiser one step past the cosine's end,
        # where the rate climbs again, while the last step trained at the floor. OneCycle
        # stays at the floor.
        reached = group["min_lr"] / cfg.lr
    return Cycle(
        cfg.epochs,
        cfg.minutes,
        epoch=saved.epoch,
        step=saved.schedule["last_epoch"],
        seconds=saved.seconds,
        factor=min(1.0, reached),
    )


def data_fingerprint(clip_sides: tuple[tuple[str, str], ...]) -> str:
    """SHA-256 of the clips and their sides, train or val: the data set a run learns from."""
    return hashlib.sha256("\n".join(f"{c} {side}" for c, side in clip_sides).encode()).hexdigest()
