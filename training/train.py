"""Train the CNN-GRU on untrimmed synthetic streams with truncated BPTT.

Each batch is a set of long streams in which actions follow one another
without a cut. They are fed in chunks of `bptt` frames; the recurrent state
flows from one chunk into the next (gradients stop at the chunk edge), so the
network learns to switch actions with a state that was never reset, exactly
as the service runs it.

    actionstream train --out runs/default            # the bundled model
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from actionstream.contract import ModelConfig
from actionstream.training.checkpoint import Checkpoint
from actionstream.training.config import TrainConfig
from actionstream.training.data import IGNORE, Streams, loss_targets, render_streams
from actionstream.training.evaluate import score
from actionstream.training.model import Recognizer, build_recognizer
from actionstream.training.synth import BACKGROUND_LABEL, LABELS, SynthConfig


def train_one_epoch(
    net: Recognizer,
    data: Streams,
    targets: np.ndarray,
    cfg: TrainConfig,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    rng: np.random.Generator,
    bar: tqdm,
) -> float:
    net.train()
    device = next(net.parameters()).device
    order = rng.permutation(len(data))
    losses = []
    for b0 in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
        idx = np.sort(order[b0 : b0 + cfg.batch_size])
        state = list(net.initial_state(len(idx)))
        for t0 in range(0, data.frames.shape[1], cfg.bptt):
            x = torch.from_numpy(data.frames[idx, t0 : t0 + cfg.bptt]).to(device)  # (B, K, H, W, 3)
            y = torch.from_numpy(targets[idx, t0 : t0 + cfg.bptt]).to(device)  # (B, K)
            logits, *state = net(x, *state)  # (B, K, classes)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            # Truncate BPTT: keep the state's value, drop its history.
            state = [s.detach() for s in state]
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    return float(np.mean(losses))


class TrainingError(Exception):
    """Training cannot start as configured; the message says why."""


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


def main(cfg: TrainConfig) -> Checkpoint:
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)

    synth = SynthConfig(size=cfg.size, fps=cfg.fps)
    t_data = time.perf_counter()
    train = render_streams(cfg.train_streams, cfg.stream_frames, cfg.seed, synth)
    val = render_streams(cfg.val_streams, cfg.val_frames, cfg.seed, synth, held_out=True)
    targets = loss_targets(train.labels, cfg.boundary_ignore)
    n_frames = train.labels.size + val.labels.size
    print(f"rendered {n_frames} frames in {time.perf_counter() - t_data:.1f}s")

    model_cfg = ModelConfig(
        num_classes=len(LABELS),
        height=cfg.size,
        width=cfg.size,
        channels=cfg.channels,
        embed=cfg.embed,
        hidden=cfg.hidden,
        cell=cfg.cell,
        layers=cfg.layers,
        dropout=cfg.dropout,
    )
    net = build_recognizer(model_cfg).to(device)
    print(
        f"training on {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    chunks = math.ceil(cfg.stream_frames / cfg.bptt)
    steps = cfg.epochs * (cfg.train_streams // cfg.batch_size) * chunks
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15
    )

    t_train = time.perf_counter()
    metrics: dict = {}
    with tqdm(total=steps, unit="step", dynamic_ncols=True) as bar:
        for epoch in range(1, cfg.epochs + 1):
            loss = train_one_epoch(net, train, targets, cfg, opt, sched, rng, bar)
            metrics = score(net, val, cfg.seed + 5, synth)
            bar.write(
                f"epoch {epoch:2d}  loss {loss:.3f}  "
                f"val frame acc {metrics['frame_accuracy']:.3f}  "
                f"settled {metrics['settled_frame_accuracy']:.3f}  "
                f"clip acc {metrics['clip_accuracy']:.3f}"
            )
    metrics["train_seconds"] = round(time.perf_counter() - t_train, 1)
    metrics["torch_threads"] = torch.get_num_threads()
    metrics["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    ckpt = Checkpoint(
        model_config=model_cfg,
        labels=LABELS,
        fps=cfg.fps,
        background_label=BACKGROUND_LABEL,
        version=f"synthetic-{cfg.size}px-seed{cfg.seed}",
        state_dict={k: v.detach().cpu() for k, v in net.state_dict().items()},
        train_config=asdict(cfg),
        eval_metrics=metrics,
    )
    ckpt.save(out / "checkpoint.pt")
    print(f"saved {out / 'checkpoint.pt'} after {metrics['train_seconds']:.0f}s of training")
    return ckpt
