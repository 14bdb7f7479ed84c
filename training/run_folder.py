"""A run folder, as `train` writes it and `--resume` carries it on.

    RUN/train_config.json  the settings, paths absolute: what --resume starts from
    RUN/last.pt            the progress after the last finished epoch (progress.py)
    RUN/metrics.csv        a row per epoch (epoch_log.py)
    RUN/checkpoint.pt      the best epoch so far, the run's model (written by train)
    RUN/train.lock         locked by the run training there now, if any (RunLock)

Their names, and those of the files `evaluate` adds, are training/run_files.py's.
Whatever would refuse a run is checked before its data is read: a new run over an
earlier one, a folder that cannot be written, a resume with other settings.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Collection, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import IO

from actionstream.settings import absolute, resolved
from actionstream.training.checkpoint import Checkpoint, CheckpointError, write_whole
from actionstream.training.config import TrainConfig
from actionstream.training.errors import TrainingError
from actionstream.training.progress import Cycle, Progress, data_fingerprint
from actionstream.training.run_files import CHECKPOINT, LOCK, PROGRESS, TRAIN_CONFIG

# What a resumed run may change: where and how long it runs, not what it learns. `out` is
# the run folder itself, wherever it lies now: a moved or renamed run is the same run.
_RESUMABLE_CHANGES = {"resume", "out", "epochs", "minutes", "device", "threads", "cache"}


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
