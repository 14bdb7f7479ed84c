"""A trained model and everything needed to use it, in one file."""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from actionstream.contract import ModelConfig
from actionstream.training.model import Recognizer, build_recognizer
from actionstream.training.run_files import CHECKPOINT, PROGRESS


class CheckpointError(Exception):
    """A checkpoint that cannot be read, with the reason in words."""


def save_whole(path: Path, obj: object) -> None:
    """torch.save, whole or not at all; a full disk raises OSError with its reason (torch's
    own writer says only "unexpected pos" in a RuntimeError)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_whole(path, buffer.getvalue())


def write_whole(path: Path, data: bytes) -> None:
    """Writes `path` through a temporary file beside it: a run stopped or a disk filled
    while writing leaves the previous file, and no temporary one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Checkpoint:
    model_config: ModelConfig
    labels: tuple[str, ...]
    fps: float
    background_label: str | None
    version: str
    state_dict: dict[str, torch.Tensor]
    train_config: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, Any] = field(default_factory=dict)
    trained_videos: tuple[str, ...] = ()  # SHA-256 of each video file trained on

    def build_model(self) -> Recognizer:
        net = build_recognizer(self.model_config)
        net.load_state_dict(self.state_dict)
        return net

    def save(self, path: Path) -> None:
        """Writes the checkpoint and its readable .json, each whole or not at all: training
        rewrites them after every epoch, and a run stopped while writing keeps the last."""
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(self)
        payload["model_config"] = asdict(self.model_config)
        save_whole(path, payload)
        # Readable copy of everything but the weights, beside the checkpoint; and but the
        # digests of the videos trained on, one line each of a data set's thousands.
        meta = {k: v for k, v in payload.items() if k not in ("state_dict", "trained_videos")}
        write_whole(
            path.with_suffix(".json"), (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
        )

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Reads a checkpoint written by `save`; a run folder means its checkpoint.pt."""
        if path.is_dir():
            path = path / CHECKPOINT
        if not path.is_file():
            if (path.parent / PROGRESS).is_file():  # train's progress file: the run stopped
                raise CheckpointError(
                    f"{path}: no such checkpoint; the run in {path.parent} stopped before its "
                    f"end (carry it on with `actionstream train --out {path.parent} --resume`)"
                )
            raise CheckpointError(
                f"{path}: no such checkpoint (train one with `actionstream train`)"
            )
        if path.suffix == ".json":
            # The checkpoint's card, beside it: the weights are in the .pt of its name.
            raise CheckpointError(
                f"{path} is a checkpoint's card (JSON), not the checkpoint; name the run "
                f"folder {path.parent} or {path.with_suffix('.pt')}"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch.load raises many unrelated types on foreign files
            raise CheckpointError(
                f"{path}: not an actionstream checkpoint ({type(e).__name__}: {_reason(e)})"
            ) from None
        if isinstance(payload, dict) and "model_config" not in payload and "optimizer" in payload:
            # train's last.pt: a run's progress for --resume, not a model to use.
            raise CheckpointError(
                f"{path} is a training run's progress file (for --resume), not a checkpoint; "
                f"name the run folder {path.parent} or its checkpoint.pt"
            )
        try:
            model_config = ModelConfig.from_dict(payload.pop("model_config"))
            payload["labels"] = tuple(payload["labels"])
            payload["trained_videos"] = tuple(payload.get("trained_videos", ()))
            return cls(model_config=model_config, **payload)
        except Exception as e:  # a file torch reads that is not a checkpoint of ours
            raise CheckpointError(
                f"{path}: not an actionstream checkpoint ({type(e).__name__}: {e})"
            ) from None


def _reason(e: Exception) -> str:
    """`e`'s message in one line. torch's weights-only unpickler wraps its reason in a
    paragraph of advice (load with weights_only=False: unsafe for a file of unknown
    origin, and no use when the file is not a checkpoint at all): the reason alone."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line.endswith("WeightsUnpickler error:"):
            return lines[i + 1]
    return lines[0] if lines else ""
