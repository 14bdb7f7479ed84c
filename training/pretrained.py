"""The motion encoder the project learnt from its synthetic world, as a starting point.

The encoder (the CNN that turns each frame difference into features) of a
GRU trained on the synthetic corpus with the difference alone as input ships
with the package. Users' runs start from it when their model has the same
encoder (`--init auto`, the default, or `--init pretrained`), so a small data
set fine-tunes the part that must learn *what* happens instead of relearning
*how motion looks*. The recurrent cell and the head start fresh: the labels
are the user's.

    python -m actionstream.training.pretrained RUN   # write RUN's encoder as the shipped one
"""

from __future__ import annotations

import dataclasses
import json
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from actionstream.contract import ModelConfig
from actionstream.training.checkpoint import Checkpoint, CheckpointError
from actionstream.training.model import Recognizer

_PREFIX = "encoder."


def encoder_path() -> Path:
    return Path(str(files("actionstream.training") / "weights" / "motion_encoder.pt"))


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    """What the encoder's weights depend on."""
    return {
        "height": cfg.height,
        "width": cfg.width,
        "channels": list(cfg.channels),
        "embed": cfg.embed,
        "appearance": cfg.appearance,
    }


def fits(cfg: ModelConfig) -> bool:
    """Whether the shipped encoder's weights fit a model of `cfg`."""
    if cfg.cell == "frame-only":
        return False  # it sees frames, not differences
    shipped = torch.load(encoder_path(), map_location="cpu", weights_only=True)
    return bool(shipped["architecture"] == _architecture(cfg))


def describe() -> str:
    shipped = torch.load(encoder_path(), map_location="cpu", weights_only=True)
    a = shipped["architecture"]
    seen = "frame + difference" if a["appearance"] else "difference only"
    channels = ",".join(map(str, a["channels"]))
    return f"{a['height']}x{a['width']} input ({seen}), --channels {channels}, --embed {a['embed']}"


def load_into(net: Recognizer) -> None:
    """Copies the shipped encoder into `net` (which must fit it)."""
    shipped = torch.load(encoder_path(), map_location="cpu", weights_only=True)
    net.encoder.load_state_dict(shipped["weights"])


def write(ckpt: Checkpoint, path: Path) -> None:
    """Saves `ckpt`'s encoder, with what it fits and where it came from."""
    weights = {
        k.removeprefix(_PREFIX): v for k, v in ckpt.state_dict.items() if k.startswith(_PREFIX)
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "architecture": _architecture(ckpt.model_config),
        "weights": weights,
        "source": {"version": ckpt.version, "eval": ckpt.eval_metrics},
    }
    with path.open("wb") as f:  # torch.save's own open says "enforce fail" for EACCES
        torch.save(payload, f)
    card = {**payload["source"], "architecture": payload["architecture"]}
    card["train_config"] = ckpt.train_config
    card["model_config"] = dataclasses.asdict(ckpt.model_config)
    path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def main(argv: list[str]) -> int:
    """Ships RUN's encoder as the one `--init pretrained` starts from (a maintainer's job:
    it rewrites a file of the installed package)."""
    usage = "usage: python -m actionstream.training.pretrained RUN"
    if argv in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(argv) != 1:
        print(usage, file=sys.stderr)
        return 2
    try:
        write(Checkpoint.load(Path(argv[0])), encoder_path())
    except CheckpointError as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cannot write {encoder_path()}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {encoder_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
