"""A trained model and everything needed to use it, in one file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from actionstream.contract import ModelConfig
from actionstream.training.model import Recognizer, build_recognizer


class CheckpointError(Exception):
    """A checkpoint that cannot be read, with the reason in words."""


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

    def build_model(self) -> Recognizer:
        net = build_recognizer(self.model_config)
        net.load_state_dict(self.state_dict)
        return net

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(self)
        payload["model_config"] = asdict(self.model_config)
        torch.save(payload, path)
        # Readable copy of everything but the weights, beside the checkpoint.
        meta = {k: v for k, v in payload.items() if k != "state_dict"}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Reads a checkpoint written by `save`; a run folder means its checkpoint.pt."""
        if path.is_dir():
            path = path / "checkpoint.pt"
        if not path.is_file():
            if (path.parent / "last.pt").is_file():  # train's progress file: the run stopped
                raise CheckpointError(
                    f"{path}: no such checkpoint; the run in {path.parent} stopped before its "
                    f"end (carry it on with `actionstream train --out {path.parent} --resume`)"
                )
            raise CheckpointError(
                f"{path}: no such checkpoint (train one with `actionstream train`)"
            )
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            model_config = ModelConfig.from_dict(payload.pop("model_config"))
            payload["labels"] = tuple(payload["labels"])
            return cls(model_config=model_config, **payload)
        except Exception as e:  # torch.load raises many unrelated types on foreign files
            raise CheckpointError(
                f"{path}: not an actionstream checkpoint ({type(e).__name__}: {e})"
            ) from None
