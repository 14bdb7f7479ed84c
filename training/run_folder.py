"""A run folder, as `train` writes it and `--resume` carries it on.

    RUN/train_config.json  the settings, paths absolute: what --resume starts from
    RUN/last.pt            the progress after the last finished epoch (Progress)
    RUN/metrics.csv        a row per epoch (EpochLog)
    RUN/checkpoint.pt      the best epoch so far, the run's model (written by train)
    RUN/train.lock         locked by the run training there now, if any (RunLock)

Their names, and those of the files `evaluate` adds, are training/run_files.py's.
Whatever would refuse a run is checked before its data is read: a new run over an
earlier one, a folder that cannot be written, a resume with other settings.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from actionstream.settings import absolute, resolved
from actionstream.training.checkpoint import Checkpoint, CheckpointError, save_whole, write_whole
from actionstream.training.config import TrainConfig
from actionstream.training.errors import TrainingError
from actionstream.training.model import Recognizer
from actionstream.training.run_files import CHECKPOINT, LOCK, PROGRESS, TRAIN_CONFIG
from actionstream.training.schedule import OneCycle
from actionstream.training.scoring import Scores

# What a resumed run may change: where and how long it runs, not what it learns. `out` is
# the run folder itself, wherever it lies now: a moved or renamed run is the same run.
_RESUMABLE_CHANGES = {"resume", "out", "epochs", "minutes", "device", "threads", "cache"}
# Validation numbers written to metrics.csv after every epoch: the Scores that EpochLog.row
# writes, by name (report.py plots them by these).
LOGGED = ("frame_accuracy", "settled_frame_accuracy", "clip_accuracy")


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


def resume_config(cfg: TrainConfig, given: Collection[str]) -> TrainConfig:
    """The settings the run in `cfg.out` was started with, but those named in `given`
    (set on this command line) taken from `cfg`: `--resume` needs nothing repeated."""
    path = Path(cfg.out) / TRAIN_CONFIG
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"--resume: {cfg.out} holds no run to continue ({e})") from None
    names = {f.name for f in fields(TrainConfig)}
    merged = {k: v for k, v in before.items() if k in names}
    # The run is the folder read, wherever it lies now; not the path it was started in.
    merged |= {k: getattr(cfg, k) for k in given} | {"out": cfg.out, "resume": True}
    if isinstance(merged.get("channels"), list):
        merged["channels"] = tuple(merged["channels"])
    try:
        return TrainConfig(**merged)
    except (TypeError, ValueError) as e:
        raise TrainingError(f"--resume: {path} does not hold valid settings ({e})") from None


def open_run(out: Path, cfg: TrainConfig) -> Progress | None:
    """The progress a resumed run goes on from, None for a new run; either refused here,
    before any data is read, so that a refusal costs nothing."""
    if cfg.resume:
        return resumable(out, cfg)
    refuse_taken(out)
    return None


def refuse_taken(out: Path) -> None:
    """Refuses an `out` a new run cannot start in: an earlier run's, or one that cannot
    become a run folder."""
    try:
        _fresh(out)
        writable(out)
    except OSError as e:  # a folder on the way that may not even be looked into
        raise TrainingError(_out_problem(out, e)) from None


def _fresh(out: Path) -> None:
    """Refuses to start a new run over an earlier one, whose results would stay beside it."""
    for name in (CHECKPOINT, PROGRESS):
        if (out / name).exists():
            raise TrainingError(
                f"{out} already holds a run ({name}); carry it on with --resume, or train "
                "into another --out (or delete it first)"
            )


def writable(out: Path, what: str = "the run folder") -> None:
    """Refuses an `out` that cannot become `what` (a run folder, evaluate's output
    folder), before any data is read: a file in the way, or a folder that cannot be
    written, would otherwise end the run after the data had loaded (or evaluate after
    scoring it all). Makes nothing, so a refusal leaves nothing behind."""
    there = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not there.is_dir():
        raise TrainingError(
            f"--out {out}: cannot make {what} ({there} is a file, not a folder); "
            "give --out a folder path"
        )
    if not os.access(there, os.W_OK | os.X_OK):
        raise TrainingError(
            f"--out {out}: cannot make {what} ({there} cannot be written); "
            "give --out a folder you can write"
        )


def _out_problem(out: Path, e: OSError) -> str:
    return (
        f"--out {out}: cannot write the run folder ({e.strerror or e}); "
        "give --out a folder you can write"
    )


def start(out: Path, cfg: TrainConfig, lock: RunLock) -> None:
    """Makes the run folder with its train_config.json, once data and model are sound,
    and takes `lock` there first: a run started into it meanwhile has it, or has since
    finished there (its checkpoint.pt is refused as at the start)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock.take()
        _fresh(out)
        (out / TRAIN_CONFIG).write_text(json.dumps(resolved(cfg), indent=2) + "\n")
    except OSError as e:
        raise TrainingError(_out_problem(out, e)) from None


class RunLock:
    """An exclusive lock on a run folder for the run's life (flock on RUN/train.lock, taken
    without waiting): a second `train` into the same --out, a new run or a resume, is
    refused in a line while the first runs, where it would interleave its epochs with the
    first's in metrics.csv and save over its checkpoint. Under torchrun only the leader,
    which writes the folder, holds it (`hold`). The system drops it when the process ends,
    however it ends; the empty file is left in the folder."""

    def __init__(self, out: Path, hold: bool = True) -> None:
        self._path = out / LOCK
        self._hold = hold
        self._file: IO[bytes] | None = None

    def take(self) -> None:
        """Takes the lock (the run folder must exist); TrainingError if another run has it."""
        if not self._hold or self._file is not None:
            return
        try:
            file = self._path.open("ab")
        except OSError as e:
            raise TrainingError(_out_problem(self._path.parent, e)) from None
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.close()
            raise TrainingError(
                f"{self._path.parent} is in use: another run is training into it now; wait "
                "for it to end, or train into another --out"
            ) from None
        self._file = file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # which drops the lock
            self._file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def resumable(out: Path, cfg: TrainConfig) -> Progress:
    """The progress `out` holds, if `cfg` may continue it; raises TrainingError if not."""
    try:
        before = json.loads((out / TRAIN_CONFIG).read_text())
        saved = Progress.load(out / PROGRESS)
    except (OSError, ValueError, RuntimeError) as e:
        raise TrainingError(f"--resume: {out} holds no run to continue ({e})") from None
    # Paths absolute from here, for a file written with them relative.
    now, before = resolved(cfg), absolute(TrainConfig, before)
    # A run that recorded its data is checked by it once read (same_data): its videos
    # may have moved (another mount in a container), and --data then names them anew.
    recorded = saved.data_fingerprint is not None
    free = _RESUMABLE_CHANGES | ({"data", "split"} if recorded else set())
    changed = sorted(k for k in now if k not in free and before.get(k) != now[k])
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} then, {now[k]!r} now" for k in changed)
        raise TrainingError(
            f"--resume: {out} was trained with other settings ({detail}); a resumed run "
            "may change only --epochs, --minutes, --device, --threads and --cache (and "
            "--data and --split to where the same videos are now): to train with these, "
            f"start a new run in another --out, from this one's weights with --init {out}"
        )
    if saved.cycle is None:  # saved before runs recorded it: the run's first, as started
        first = Cycle(before.get("epochs", cfg.epochs), before.get("minutes", cfg.minutes))
        return replace(saved, cycle=first)
    return saved


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


def _its_checkpoint(out: Path) -> Checkpoint:
    """The run's saved model, or the one line that says why it cannot be read."""
    try:
        return Checkpoint.load(out)
    except CheckpointError as e:
        raise TrainingError(f"--resume: {e}") from None


def finished(out: Path, epochs: int, done: int, say: Callable[..., None]) -> Checkpoint:
    """A run `--resume` finds complete, having run `done` epochs of `epochs`: said so,
    and nothing rewritten (resuming is safe to repeat, as when a training container
    restarts with it)."""
    ckpt = _its_checkpoint(out)
    ran = (
        f"its last epoch ({epochs})"
        if done == epochs
        else f"{done} epochs, more than --epochs {epochs}"
    )
    say(
        f"{out} has already run {ran}; nothing to resume "
        f"({out / CHECKPOINT} holds epoch {ckpt.eval_metrics.get('epoch')}, its best)"
    )
    return ckpt


def out_of_time(out: Path, minutes: float, seconds: float, say: Callable[..., None]) -> Checkpoint:
    """A run `--resume` finds past its time budget, which counts the whole run's training:
    said so, and nothing rewritten, as for a finished run."""
    ckpt = _its_checkpoint(out)
    say(
        f"{out} has already trained {seconds / 60:.3g} of its --minutes {minutes:g} (the whole "
        "run's budget); give a larger --minutes to go on, or 0 for no limit "
        f"({out / CHECKPOINT} holds epoch {ckpt.eval_metrics.get('epoch')}, its best)"
    )
    return ckpt


def refuse_lost_videos(saved: Progress, cfg: TrainConfig) -> None:
    """Refuses to resume a run on videos it recorded when --data no longer finds them,
    before anything is read: they may be mounted elsewhere now."""
    if saved.data_fingerprint is not None and cfg.data is not None and not Path(cfg.data).exists():
        raise TrainingError(
            f"--resume: the run's videos are no longer at {cfg.data}; give --data where "
            "they are now"
        )


def data_fingerprint(clip_sides: tuple[tuple[str, str], ...]) -> str:
    """SHA-256 of the clips and their sides, train or val: the data set a run learns from."""
    return hashlib.sha256("\n".join(f"{c} {side}" for c, side in clip_sides).encode()).hexdigest()


def same_data(saved: Progress, clip_sides: tuple[tuple[str, str], ...]) -> None:
    """Refuses to resume on other data than the run started with: resumed, it would go on
    learning from another split and score epochs on other held-out clips. Progress saved
    before runs recorded their data has no fingerprint; its --data path was compared."""
    if saved.data_fingerprint is None or saved.data_fingerprint == data_fingerprint(clip_sides):
        return
    then, now = dict(saved.data_clips or ()), dict(clip_sides)
    added, gone = len(now.keys() - then.keys()), len(then.keys() - now.keys())
    moved = sum(then[c] != now[c] for c in then.keys() & now.keys())
    how = [f"{added} clip(s) added" if added else "", f"{gone} gone" if gone else ""]
    # Clips added or gone draw the held-out split again, which moves others: say so,
    # rather than blame the user for moves they never made.
    redrawn = " as the split was drawn again" if added or gone else ""
    how.append(f"{moved} moved between training and validation{redrawn}" if moved else "")
    raise TrainingError(
        f"--resume: the data differs from the run's ({', '.join(filter(None, how))} since the "
        "run started); resume needs the same videos, split as they were (train a new run "
        "into another --out to use these)"
    )


def note_changes(out: Path, cfg: TrainConfig) -> None:
    """Notes in train_config.json where the run folder, its videos and split file are now,
    if they moved, and the run's --epochs and --minutes if this resume changed them: the
    next --resume finds them without being told again, and the run's settings say how
    long it now runs."""
    path = out / TRAIN_CONFIG
    before, now = json.loads(path.read_text()), resolved(cfg)
    changed = ("out", "data", "split", "epochs", "minutes")
    noted = {k: now[k] for k in changed if before.get(k) != now[k]}
    if noted:
        try:
            write_whole(path, (json.dumps(before | noted, indent=2) + "\n").encode())
        except OSError as e:
            raise TrainingError(_out_problem(out, e)) from None


@contextlib.contextmanager
def saving(out: Path, epoch: int) -> Iterator[None]:
    """A full disk or a lost permission while saving, as one line that says what is kept:
    each file is written whole or not at all, so the run folder holds the last epoch
    saved, and --resume goes on from it once the cause is gone."""
    try:
        yield
    except OSError as e:
        then = (
            "it keeps the last epoch saved: make room (or fix the permission), then carry "
            "on with --resume"
            if (out / PROGRESS).is_file()
            else "no epoch was saved to resume from: make room (or fix the permission), "
            f"then delete {out} and train again"
        )
        raise TrainingError(
            f"cannot save epoch {epoch} in {out} ({e.strerror or e}); the run stopped, and {then}"
        ) from None


class EpochLog:
    """metrics.csv: a row per epoch, written as it comes, so a killed run keeps its log."""

    def __init__(self, path: Path, rows: list[list[str]]) -> None:
        """Starts the file with `rows` (those of a resumed run's finished epochs)."""
        self._path = path
        self.rows = list(rows)
        with path.open("w", newline="") as f:
            csv.writer(f).writerows(
                [["epoch", "seconds", "train_loss", *LOGGED, "steps"], *self.rows]
            )

    def row(self, epoch: int, seconds: float, loss: float, scores: Scores, steps: int) -> list[str]:
        """`steps`: the optimiser steps the epoch took, fewer in an epoch --minutes cut short."""
        logged = (scores.frame_accuracy, scores.settled_frame_accuracy, scores.clip_accuracy)
        # An empty cell where no frame was settled: "None" is no number a CSV reader knows.
        cells = ["" if v is None else str(v) for v in logged]
        return [str(epoch), f"{seconds:.1f}", f"{loss:.4f}", *cells, str(steps)]

    def write(self, row: list[str]) -> None:
        self.rows.append(row)
        with self._path.open("a", newline="") as f:
            csv.writer(f).writerow(row)
