"""Train a recogniser on untrimmed streams with truncated BPTT.

Each batch is a set of long streams in which actions follow one another
without a cut: rendered synthetic streams, or a user's clips joined end to
end (training/video_data.py). They are fed in chunks of `bptt` frames; the
recurrent state flows from one chunk into the next (gradients stop at the
chunk edge), so the network learns to switch actions with a state that was
never reset, exactly as the service runs it. After every epoch the held-out
streams and clips are scored; the run keeps the best epoch by per-frame
accuracy on the held-out streams (what the service delivers). The run folder,
and resuming from it, are training/run_folder.py's; where its data comes from,
training/data_loading.py's; where a new network starts, training/init.py's.

    actionstream train --out runs/default                 # the bundled model
    actionstream train --data videos/ --out runs/mine     # a user's class folders
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from actionstream.contract import ModelConfig
from actionstream.settings import resolved
from actionstream.training import distributed, run_folder
from actionstream.training.checkpoint import Checkpoint
from actionstream.training.config import TrainConfig
from actionstream.training.data import IGNORE, TrainingData, loss_targets
from actionstream.training.data_loading import load_data
from actionstream.training.distributed import Team
from actionstream.training.epoch_log import EpochLog
from actionstream.training.errors import TrainingError
from actionstream.training.init import initialise
from actionstream.training.model import Recognizer, build_recognizer
from actionstream.training.progress import Cycle, Progress, cycle_on
from actionstream.training.run_files import CHECKPOINT, METRICS, PROGRESS, remove_evaluation
from actionstream.training.schedule import OneCycle
from actionstream.training.scoring import Scores, score


def train_one_epoch(run: RunParts, *, bar: tqdm) -> tuple[float, int, int]:
    """One pass over this process's batches, or less when the time budget runs out: the
    mean loss (NaN when no frame counted), the optimiser steps taken and the frames the
    loss counted."""
    net, model, cfg, opt, sched, team = run.net, run.model, run.cfg, run.opt, run.sched, run.team
    model.train()
    device = next(net.parameters()).device
    losses = []
    steps = counted = 0
    for batch in run.data.batches(run.rng, (team.rank, team.size)):
        targets = loss_targets(batch.labels, cfg.boundary_ignore, batch.cuts)
        state = list(net.initial_state(len(batch)))
        for t0 in range(0, batch.frames.shape[1], cfg.bptt):
            x = torch.from_numpy(batch.frames[:, t0 : t0 + cfg.bptt]).to(device)  # (B, K, H, W, 3)
            y = torch.from_numpy(targets[:, t0 : t0 + cfg.bptt]).to(device)  # (B, K)
            logits, *state = model(x, *state)  # (B, K, classes)
            # Every frame of every stream one sample: (B, K, classes) -> (B*K, classes),
            # (B, K) -> (B*K,).
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            # Truncate BPTT: keep the state's value, drop its history.
            state = [s.detach() for s in state]
            steps += 1
            bar.update(1)
            # A chunk that lies wholly within --boundary-ignore of a change has no frame
            # to count: its loss is NaN (its gradient zero), and it says nothing of the
            # epoch's. Its step is taken all the same: DDP's processes step together.
            frames = int((targets[:, t0 : t0 + cfg.bptt] != IGNORE).sum())
            if frames:
                counted += frames
                losses.append(loss.item())
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if team.agree(run.deadline.passed()):
            break
    return float(np.mean(losses)) if losses else math.nan, steps, counted


def score_epoch(net: Recognizer, data: TrainingData, cfg: TrainConfig) -> Scores:
    """The epoch's scores on the held-out streams and clips, as `evaluate` scores a run."""
    return score(net, data.val_streams, data.val_clips, data.labels, cfg.fps)


def train_epochs(run: RunParts, say: Callable[..., None]) -> None:
    """The epochs from `run.first` to --epochs, or until the clock stops the run: each
    trained on every process, then scored and saved by the leader."""
    cfg, team = run.cfg, run.team
    with tqdm(
        total=run.steps,
        initial=(run.first - 1) * run.steps // cfg.epochs,
        unit="step",
        dynamic_ncols=True,
        # None: no bar when stderr is no terminal, as in a log file, which its redraws flood.
        disable=None if team.leader else True,
    ) as bar:
        for epoch in range(run.first, cfg.epochs + 1):
            loss, steps_taken, counted = train_one_epoch(run, bar=bar)
            loss, counted = _over_the_team(loss, counted, team)
            check_loss(epoch, loss, counted, cfg)
            # Asked before the epoch is saved: a run the clock stops has spent its budget.
            stop = team.agree(run.deadline.passed())
            if run.log is not None:  # the leader scores and saves the epoch
                bar.write(score_and_save(run, epoch, loss, steps_taken, stop, run.log))
            team.wait()
            if stop:
                say(f"stopped after {cfg.minutes:g} minutes, in epoch {epoch}")
                return


def score_and_save(
    run: RunParts, epoch: int, loss: float, steps: int, stop: bool, log: EpochLog
) -> str:
    """The leader's end of an epoch: scores it on the held-out data, keeps it if it is the
    best so far, and saves the best as the run's checkpoint.pt, then the progress that
    counts this epoch done (last.pt) and its metrics.csv row; returns the epoch's line.

    `steps` is the optimiser steps the epoch took, and `stop` whether the clock stopped
    the run: its progress then records the budget as spent, however long saving took.

    A new best epoch removes what `evaluate` left in the run folder (a resumed run's, or
    one evaluated while it trained), with a line saying so: it scored the model
    checkpoint.pt held until now, and would read as this one's.
    """
    cfg, best = run.cfg, run.best
    scores = score_epoch(run.net, run.data, cfg)
    earlier = best.epoch if best.scores is not None else None
    best.offer(scores, epoch, run.net)
    removed: list[str] = []
    seconds = time.perf_counter() - run.started
    if stop:
        seconds = max(seconds, cfg.minutes * 60)
    group = run.opt.param_groups[0]  # one group: the schedule moves every one alike
    row = log.row(epoch, seconds, loss, scores, steps, (group["lr"], group["betas"][0]))
    progress = Progress.snapshot(
        epoch=epoch,
        seconds=seconds,
        inherited_videos=run.inherited,
        clip_sides=run.data.clip_sides,
        best=best.record(),
        best_weights=best.weights,
        log=[*log.rows, row],
        net=run.net,
        opt=run.opt,
        sched=run.sched,
        rng=run.rng,
        device=run.device,
        cycle=run.cycle,
    )
    with run_folder.saving(run.out, epoch):
        # The best so far as the run's model, before the progress that counts this epoch
        # done: a run stopped at any point can be evaluated and exported. The old
        # model's evaluation goes first: stopped between the two, no stale one is left.
        if best.epoch == epoch:
            removed = remove_evaluation(run.out)
        _make_checkpoint(run, seconds).save(run.out / CHECKPOINT)
        progress.save(run.out / PROGRESS)
        log.write(row)
    stale = ""
    if removed:
        names = " and ".join(filter(None, [", ".join(removed[:-1]), removed[-1]]))
        of = f" (epoch {earlier})" if earlier is not None else ""
        stale = f"removed {names} of the earlier model{of}; run evaluate again\n"
    return stale + (
        f"epoch {epoch:2d}  loss {loss:.3f}  "
        f"val frame acc {scores.frame_accuracy:.3f}  "
        f"settled {_accuracy(scores.settled_frame_accuracy)}  "
        f"clip acc {scores.clip_accuracy:.3f}"
    )


def check_loss(epoch: int, loss: float, counted: int, cfg: TrainConfig) -> None:
    """Stops the run when the epoch's loss is not a number, before it is scored or saved:
    a NaN model is no best epoch."""
    if not math.isfinite(loss):
        raise TrainingError(_no_loss(epoch, loss, counted, cfg))


def main(cfg: TrainConfig, data: TrainingData | None = None) -> Checkpoint:
    """Trains as `cfg` says, on `data` if given (else what `cfg` names), and saves the run.

    Under torchrun, every process trains and the leader validates and saves; every
    process returns the leader's checkpoint (sent to them: --out may be a folder of
    the leader's machine alone).
    """
    team, device = distributed.join(resolve_device(cfg.device))
    finished = False
    try:
        ckpt = team.share(_train(cfg, data, team, device))
        finished = True
    finally:
        distributed.leave(team, finished)
    if ckpt is None:  # the leader always returns one
        raise TrainingError("the leading process returned no checkpoint")
    return ckpt


def _train(
    cfg: TrainConfig, data: TrainingData | None, team: Team, device: torch.device
) -> Checkpoint | None:
    """The run; its checkpoint on the leader, None on the other processes."""
    say = print if team.leader else _silent
    # Skipped videos and warnings to stderr, as `evaluate` has them: stdout is the run's.
    warn = _warn if team.leader else _silent
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    batches = _batches_per_process(cfg, team)
    out = Path(cfg.out)
    # The leader holds the run folder for the run's life: a second run into it is refused.
    with run_folder.RunLock(out, hold=team.leader) as lock:
        if cfg.resume and out.is_dir():  # before its progress is read, which a run may write
            lock.take()
        saved = run_folder.open_run(out, cfg)
        if saved is not None:  # a new run takes it where it makes the folder (set_up)
            lock.take()
        # Without its checkpoint.pt (killed while saving it) it goes on: no epoch is left to
        # run, and the model is saved from the progress.
        if saved is not None and saved.epoch >= cfg.epochs and (out / CHECKPOINT).is_file():
            return run_folder.finished(out, cfg.epochs, saved.epoch, say)
        # --minutes bounds the whole run, the time before a resume included. A run whose time
        # is spent trains no further; without its checkpoint.pt it is saved from the progress.
        spent = saved is not None and 0 < cfg.minutes * 60 <= saved.seconds
        if spent and (out / CHECKPOINT).is_file():
            assert saved is not None
            return run_folder.out_of_time(out, cfg.minutes, saved.seconds, say)
        run = set_up(cfg, data, saved, batches, team, device, say, warn, lock)
        if not spent:  # spent, it only saves its model from the progress, as below
            train_epochs(run, say)
        if not team.leader:
            return None  # only the leader validated, so only it knows the best epoch
        return finish(run, say)


def set_up(
    cfg: TrainConfig,
    data: TrainingData | None,
    saved: Progress | None,
    batches: int,
    team: Team,
    device: torch.device,
    say: Callable[..., None],
    warn: Callable[..., None],
    lock: run_folder.RunLock,
) -> RunParts:
    """Reads the data, builds the network and its optimiser and schedule, and makes the
    run folder (fresh), taking `lock` there, or restores them as `saved` left them
    (resumed)."""
    out = Path(cfg.out)
    data = _run_data(cfg, data, saved, team, say, warn)
    model_cfg = _model_config(cfg, len(data.labels))
    net, model, inherited = _network(model_cfg, cfg, data.labels, saved, team, device, say)
    if team.leader and saved is None:  # made once data and model are sound
        run_folder.start(out, cfg, lock)
    where = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    together = f", data-parallel over {team.size} processes" if team.size > 1 else ""
    say(f"training on {device}{where}{together}")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = batches * math.ceil(cfg.stream_frames / cfg.bptt)
    # The time a resumed run already spent: its progress keeps it (old last.pt files too).
    deadline = Deadline(cfg.minutes, saved.seconds if saved is not None else 0.0)
    cycle = cycle_on(saved, cfg)
    sched = _schedule(opt, cfg, per_epoch, deadline, cycle)
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    best = Best(None, 0, {})
    first = 1
    if saved is not None:  # carry on where the run's last finished epoch left it
        saved.restore(net, opt, sched, rng, device)
        best = Best.from_record(saved.best, saved.best_weights)
        started -= saved.seconds
        first = saved.epoch + 1
        new_cycle = _new_cycle(cycle, saved, cfg, sched.falls_only)
        say(f"resuming {out} after epoch {saved.epoch}{new_cycle}")
    rows = saved.log if saved is not None else []
    return RunParts(
        out=out,
        cfg=cfg,
        model_cfg=model_cfg,
        data=data,
        net=net,
        model=model,
        opt=opt,
        sched=sched,
        rng=rng,
        team=team,
        device=device,
        inherited=inherited,
        started=started,
        cycle=cycle,
        deadline=deadline,
        best=best,
        first=first,
        steps=cfg.epochs * per_epoch,
        log=EpochLog(out / METRICS, rows) if team.leader else None,
    )


def finish(run: RunParts, say: Callable[..., None]) -> Checkpoint:
    """The leader's end of the run: its best epoch saved as checkpoint.pt, and returned."""
    best = run.best
    ckpt = _make_checkpoint(run, seconds=time.perf_counter() - run.started)
    with run_folder.saving(run.out, best.epoch):
        ckpt.save(run.out / CHECKPOINT)
    say(
        f"saved {run.out / CHECKPOINT} (epoch {best.epoch}, the best on held-out "
        f"data) after {ckpt.eval_metrics['train_seconds']:.0f}s of training"
    )
    return ckpt


@dataclass(frozen=True)
class RunParts:
    """The run as its epochs need it, built once by set_up, fresh or restored from a
    resumed run's progress: where it goes, its settings and data, the network with its
    optimiser, schedule and random state, its clock, and its best epoch so far."""

    out: Path
    cfg: TrainConfig
    model_cfg: ModelConfig
    data: TrainingData
    net: Recognizer
    model: nn.Module  # `net`, or its DDP wrapper: what trains
    opt: torch.optim.Optimizer
    sched: OneCycle
    rng: np.random.Generator
    team: Team
    device: torch.device
    inherited: tuple[str, ...]  # the videos (SHA-256) --init RUN's weights learnt from
    # When its training started (time.perf_counter), earlier by a resumed run's seconds.
    started: float
    cycle: Cycle  # the learning-rate cycle it trains in
    deadline: Deadline
    best: Best  # the resumed run's best epoch, or none yet; offered each epoch's scores
    first: int  # the first epoch to train: 1, or the one after a resumed run's last
    steps: int  # optimiser steps in the whole run, its epochs before a resume included
    log: EpochLog | None  # the leader's metrics.csv; the other processes save nothing


@dataclass
class Best:
    """The best epoch so far, by per-frame accuracy on the held-out streams: the run's model."""

    scores: Scores | None  # None before the first epoch is scored
    epoch: int
    weights: dict[str, torch.Tensor]

    def offer(self, scores: Scores, epoch: int, net: Recognizer) -> None:
        # Ties go to the later epoch: it has seen more data for the same score.
        if self.scores is None or scores.frame_accuracy >= self.scores.frame_accuracy:
            self.scores, self.epoch = scores, epoch
            self.weights = copy.deepcopy(net.state_dict())

    def record(self) -> dict[str, Any]:
        """Its scores with its epoch's number, as the checkpoint and last.pt hold them."""
        if self.scores is None:
            raise TrainingError("no epoch has been scored yet, so none is the best")
        return asdict(self.scores) | {"epoch": self.epoch}

    @classmethod
    def from_record(cls, record: dict[str, Any], weights: dict[str, torch.Tensor]) -> Best:
        """The best epoch as `record` (of a resumed run's last.pt) holds it."""
        scores = {k: v for k, v in record.items() if k != "epoch"}
        return cls(Scores(**scores), record["epoch"], weights)


class Deadline:
    """The time budget (`--minutes`) of the whole run; never expires when there is none.

    `spent` seconds are those a resumed run had already trained: counted against the
    budget, so that the schedule, which follows the clock, goes on cooling where it
    stopped rather than starting its cycle again."""

    def __init__(self, minutes: float, spent: float = 0.0) -> None:
        self._start = time.monotonic() - spent
        self._seconds = minutes * 60 if minutes > 0 else math.inf

    def passed(self) -> bool:
        return self.spent() >= 1.0

    def spent(self, after: float = 0.0) -> float:
        """The share used so far of the budget (0 without one), or of what was left of it
        `after` that many seconds of training (where a learning-rate cycle began)."""
        return (time.monotonic() - self._start - after) / (self._seconds - after)


def _batches_per_process(cfg: TrainConfig, team: Team) -> int:
    """Each process's batches in an epoch; refuses a team with more processes than batches."""
    batches = cfg.train_streams // cfg.batch_size // team.size
    if batches < 1:
        raise TrainingError(
            f"{cfg.train_streams} training streams make {cfg.train_streams // cfg.batch_size} "
            f"batch(es) of {cfg.batch_size}, fewer than the {team.size} processes: raise "
            "--train-streams or lower --batch-size"
        )
    return batches


def _run_data(
    cfg: TrainConfig,
    data: TrainingData | None,
    saved: Progress | None,
    team: Team,
    say: Callable[..., None],
    warn: Callable[..., None],
) -> TrainingData:
    """`data`, or what `cfg` names; a resumed run's checked to be the data it started
    with, and where it is now noted in the run folder."""
    if data is None:
        # Under torchrun, one process a machine decodes the videos into the cache first.
        data = team.local_first(lambda: _load_run_data(cfg, saved, say, warn))
    if saved is not None:
        run_folder.same_data(saved, data.clip_sides)
        if team.leader:
            run_folder.note_changes(Path(cfg.out), cfg)
    return data


def _load_run_data(
    cfg: TrainConfig, saved: Progress | None, say: Callable[..., None], warn: Callable[..., None]
) -> TrainingData:
    """What `cfg` names to train on, split as a resumed run recorded; read before the run
    folder is made, so that bad data leaves nothing behind."""
    if saved is not None:
        run_folder.refuse_lost_videos(saved, cfg)
    t_data = time.perf_counter()
    sides = dict(saved.data_clips) if saved is not None and saved.data_clips else None
    data = load_data(cfg, say, sides, warn=warn)
    say(f"data ready in {time.perf_counter() - t_data:.1f}s")
    return data


def _network(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    labels: tuple[str, ...],
    saved: Progress | None,
    team: Team,
    device: torch.device,
    say: Callable[..., None],
) -> tuple[Recognizer, nn.Module, tuple[str, ...]]:
    """The network on `device` as --init starts it (a resumed run's loads its own weights
    later); what trains it, the network itself or, with more than one process, its DDP
    wrapper; and the videos (SHA-256) its weights learnt from before this run."""
    net = build_recognizer(model_cfg)
    if saved is not None:
        inherited = saved.inherited_videos
    else:
        start, inherited = initialise(net, cfg.init, labels, cfg.fps)
        say(f"CNN starts from {start}")
    net = net.to(device)
    model: nn.Module = net
    if team.size > 1:
        model = DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    return net, model, inherited


def _over_the_team(loss: float, counted: int, team: Team) -> tuple[float, int]:
    """The epoch's loss and counted frames over every process, weighted by its frames:
    one process whose share had no frame to count is no reason to stop, and every
    process decides alike. Alone, its own figures as they are."""
    if team.size == 1:
        return loss, counted
    weighted, frames = team.total([loss * counted if counted else 0.0, float(counted)])
    return (weighted / frames if frames else math.nan), int(frames)


def _no_loss(epoch: int, loss: float, counted: int, cfg: TrainConfig) -> str:
    """Why an epoch's loss is not a number, and the settings to look at."""
    if not counted:
        return (
            f"epoch {epoch} had no frame to learn from: the loss leaves out the first "
            f"{cfg.boundary_ignore} frame(s) after every action change or cut between clips "
            "(--boundary-ignore), "
            "and no action in its streams lasted longer; lower --boundary-ignore, or use "
            "longer clips"
        )
    return (
        f"epoch {epoch}: the training loss is {loss} (training diverged), so the run stopped "
        f"without saving the epoch; lower --lr (now {cfg.lr:g}) or --grad-clip (now "
        f"{cfg.grad_clip:g})"
    )


def _model_config(cfg: TrainConfig, num_classes: int) -> ModelConfig:
    """The architecture `cfg` asks for, for `num_classes` labels."""
    return ModelConfig(
        num_classes=num_classes,
        height=cfg.size,
        width=cfg.size,
        channels=cfg.channels,
        embed=cfg.embed,
        hidden=cfg.hidden,
        cell=cfg.cell,
        appearance=cfg.appearance,
        layers=cfg.layers,
        dropout=cfg.dropout,
    )


def _schedule(
    opt: torch.optim.Optimizer,
    cfg: TrainConfig,
    per_epoch: int,
    deadline: Deadline,
    cycle: Cycle,
) -> OneCycle:
    """One cycle of the learning rate and AdamW's beta1 (schedule.py) over the run's
    steps, or, with a time budget, over whichever ends first, steps or time: a run cut
    short by the clock has still cooled its learning rate down. Without one, and in a
    run's first cycle, it is torch's OneCycleLR, as the bundled model was trained.

    A run resumed with another --epochs or --minutes is in a new `cycle`, from where it
    stood: its rate rises from the one it had reached (no jump) back to --lr, then cools
    down by the end of the run's epochs or budget as they are now; beta1 mirrors it. A
    new cycle of under 7 steps, too short to rise, only cools, from the rate reached."""
    # The cycle's own steps: its epochs', none cut short (the clock's last ends a run).
    steps = max(1, (cfg.epochs - cycle.epoch) * per_epoch)
    clock = (lambda: deadline.spent(cycle.seconds)) if cfg.minutes > 0 else None
    return OneCycle(opt, cfg.lr, steps, begin=cycle.step, rise_from=cycle.factor, clock=clock)


def _new_cycle(cycle: Cycle, saved: Progress, cfg: TrainConfig, falls_only: bool) -> str:
    """What a resume in another --epochs or --minutes than its cycle's does with the
    learning rate. Not "changed" by this resume, necessarily: one stopped before it
    finished an epoch leaves its cycle as it was and the run's settings as it asked."""
    if cycle is saved.cycle:
        return ""
    was = saved.cycle
    planned = "another length"
    if was is not None:
        planned = f"{was.epochs} epochs" + (f" or {was.minutes:g} minutes" if was.minutes else "")
    why = f"; its learning rate's cycle was set for {planned}, so it starts a new cycle"
    budget = f" or {cfg.minutes:g} minutes" if cfg.minutes > 0 else ""
    reached = f"the {cfg.lr * (cycle.factor or 0):.2g} it had reached"
    if falls_only:
        return (
            f"{why}, too few steps to rise in: down from {reached} to the floor by epoch "
            f"{cfg.epochs}{budget}"
        )
    return (
        f"{why}: from {reached}, up to --lr {cfg.lr:g} and down again by epoch {cfg.epochs}{budget}"
    )


def _make_checkpoint(run: RunParts, seconds: float) -> Checkpoint:
    """The run's model: the best epoch's weights, with its metrics and how it was trained;
    its videos are its training split's and those `run.inherited` with `--init RUN`'s
    weights."""
    best = run.best
    metrics = {
        **best.record(),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu",
        "processes": run.team.size,
    }
    data = run.data
    return Checkpoint(
        model_config=run.model_cfg,
        labels=data.labels,
        fps=run.cfg.fps,
        background_label=data.background_label,
        version=f"{data.version}-{weights_digest(best.weights)}",
        state_dict={k: v.detach().cpu() for k, v in best.weights.items()},
        # As train_config.json has them: paths absolute, and the run's settings, not how
        # this command went on with it (a model card said `resume: true` beside a
        # train_config.json that said false).
        train_config=resolved(run.cfg, resume=False),
        eval_metrics=metrics,
        trained_videos=tuple(sorted({*data.trained_videos, *run.inherited})),
    )


def weights_digest(weights: dict[str, torch.Tensor]) -> str:
    """8 hex digits of the weights' SHA-256, for the model's version: two runs of one
    recipe (another seed, more epochs) report two versions, a resumed run its own."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode())
        digest.update(weights[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:8]


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; `cuda` without one is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError(
            "--device cuda: this torch build sees no CUDA device "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda or 'not built in'})"
        )
    return torch.device(name)


def _accuracy(value: float | None) -> str:
    """An accuracy for the log line; "n/a" where no frame was there to score."""
    return "n/a" if value is None else f"{value:.3f}"


def _warn(line: str) -> None:
    """A skipped video or a warning, on stderr: what `train` prints on stdout is the run."""
    print(line, file=sys.stderr)


def _silent(*args: object, **kwargs: object) -> None:
    """`print` for the processes that are not the leader."""
