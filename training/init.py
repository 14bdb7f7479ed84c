"""Where a new run's network starts: the shipped motion encoder, scratch, or the weights
of an earlier run (`--init`). A resumed run loads its own weights instead (run_folder)."""

from __future__ import annotations

from pathlib import Path

import torch

from actionstream.training import pretrained
from actionstream.training.checkpoint import Checkpoint, CheckpointError
from actionstream.training.config import INIT_CHOICES
from actionstream.training.errors import TrainingError
from actionstream.training.model import Recognizer


def initialise(
    net: Recognizer, init: str, labels: tuple[str, ...], fps: float
) -> tuple[str, tuple[str, ...]]:
    """Loads the shipped motion encoder, or a run's weights, as `init` asks; says where
    the network starts, and which videos (SHA-256) the weights already learnt from.
    `fps` is the new run's frame rate."""
    if init not in INIT_CHOICES:
        return _start_from_run(net, Path(init), labels, fps)
    return _start_shipped(net, init), ()


def _start_shipped(net: Recognizer, init: str) -> str:
    fits = pretrained.fits(net.cfg)
    if init == "pretrained" and not fits:
        raise TrainingError(
            f"--init pretrained: the shipped encoder fits {pretrained.describe()} "
            "(no frame-only cell); change those settings or use --init scratch"
        )
    if init == "scratch":
        return "scratch"
    if not fits:  # --init auto: said, so that a user who meant to start from it knows why not
        return f"scratch (the shipped encoder fits {pretrained.describe()}, not these settings)"
    pretrained.load_into(net)
    return f"the pretrained motion encoder ({pretrained.encoder_path().name})"


def _start_from_run(
    net: Recognizer, path: Path, labels: tuple[str, ...], fps: float
) -> tuple[str, tuple[str, ...]]:
    """Copies an earlier run's weights into `net`, a part at a time: its CNN (which must
    fit), its recurrent cell when that fits too, its head only when its labels are these,
    in this order. Fine-tuning on new videos then starts from what that run learnt, so
    its videos count among this run's (evaluate warns of them)."""
    try:
        ckpt = Checkpoint.load(path)
    except CheckpointError as e:
        raise TrainingError(f"--init: {e}") from None
    own = net.state_dict()

    def fitting(part: str) -> dict[str, torch.Tensor] | None:
        mine = {k: v for k, v in own.items() if k.startswith(part + ".")}
        theirs = {k: v for k, v in ckpt.state_dict.items() if k.startswith(part + ".")}
        if mine.keys() != theirs.keys():
            return None
        return theirs if all(theirs[k].shape == v.shape for k, v in mine.items()) else None

    # The CNN's weight shapes follow the frame side only as ceil(size / 2**blocks), so a
    # run at --size 32 fits a model at 29 too; its filters learnt at another scale.
    # A checkpoint saved without a train_config has the size in its model's.
    size = int(ckpt.train_config.get("size", ckpt.model_config.height))
    other_size = (size, size) != (net.cfg.height, net.cfg.width)
    encoder = fitting("encoder")
    if encoder is None or other_size or ckpt.model_config.appearance != net.cfg.appearance:
        why = f" (it was trained at --size {size}, this run is at {net.cfg.height})"
        raise TrainingError(
            f"--init {path}: its CNN does not fit this model{why if other_size else ''}; "
            "train with its settings "
            f"(--size {size}, --channels "
            f"{','.join(map(str, ckpt.model_config.channels))}, --embed "
            f"{ckpt.model_config.embed}{', --appearance' if ckpt.model_config.appearance else ''})"
        )
    taken, parts = dict(encoder), ["CNN"]
    cell = fitting("cell") if ckpt.model_config.cell == net.cfg.cell else None
    if cell is not None:
        taken |= cell
        parts.append(f"{net.cfg.cell.upper()} cell")
    head = fitting("head") if tuple(ckpt.labels) == tuple(labels) else None
    if head is not None:
        taken |= head
        parts.append("head")
    net.load_state_dict(taken, strict=False)
    fresh = [p for p in ("cell", "head") if not any(k.startswith(p + ".") for k in taken)]
    rest = f"; {' and '.join(fresh)} fresh" if fresh else ""
    if ckpt.fps != fps:
        # Its CNN sees each frame beside its difference from the last: at another frame
        # rate an action moves by another amount from one step to the next.
        rest += (
            f"; it learnt at {ckpt.fps:g} fps, this run is at {fps:g}, so motion per step "
            "differs from what its weights know"
        )
    return f"{path} ({', '.join(parts)}{rest})", ckpt.trained_videos
