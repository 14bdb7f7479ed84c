"""The training stage's one config. Plain dataclass, no torch import, so the CLI
can build its flags without loading torch."""

from __future__ import annotations

from dataclasses import dataclass, field


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    out: str = field(
        default="runs/default", metadata=_help("run folder for checkpoint and configs")
    )
    seed: int = field(default=0, metadata=_help("seeds data, init and batch order"))
    # Data: untrimmed synthetic streams, each cut into BPTT chunks.
    train_streams: int = field(default=1024, metadata=_help("synthetic training streams"))
    stream_frames: int = field(default=160, metadata=_help("frames per training stream"))
    bptt: int = field(
        default=40, metadata=_help("frames per truncated-BPTT chunk; state carries across chunks")
    )
    val_streams: int = field(default=32, metadata=_help("held-out streams scored after each epoch"))
    val_frames: int = field(default=300, metadata=_help("frames per held-out stream"))
    size: int = field(default=64, metadata=_help("frame side, pixels (model input is size x size)"))
    fps: float = field(default=10.0, metadata=_help("frame rate the model is trained at"))
    boundary_ignore: int = field(
        default=2,
        metadata=_help("frames after an action change left out of the loss (nobody can know yet)"),
    )
    # Model.
    channels: tuple[int, ...] = field(default=(16, 32, 64, 64), metadata=_help("CNN widths"))
    embed: int = field(default=128, metadata=_help("per-frame feature size"))
    hidden: int = field(default=128, metadata=_help("GRU state size"))
    # Optimisation.
    epochs: int = field(default=12, metadata=_help("passes over the training streams"))
    batch_size: int = field(default=32, metadata=_help("streams per batch"))
    lr: float = field(default=3e-3, metadata=_help("peak AdamW learning rate (one-cycle)"))
    weight_decay: float = field(default=1e-4, metadata=_help("AdamW weight decay"))
    grad_clip: float = field(default=1.0, metadata=_help("max gradient norm (BPTT can explode)"))
    threads: int = field(default=0, metadata=_help("torch CPU threads (0: all cores)"))

    def __post_init__(self) -> None:
        for name in (
            "train_streams",
            "stream_frames",
            "bptt",
            "val_streams",
            "val_frames",
            "embed",
            "hidden",
            "epochs",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size > self.train_streams:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed "
                f"train_streams ({self.train_streams})"
            )
        for name in ("fps", "lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.boundary_ignore < 0 or self.weight_decay < 0 or self.threads < 0:
            raise ValueError("boundary_ignore, weight_decay and threads must not be negative")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive widths, got {self.channels}")
        stride = 2 ** len(self.channels)  # each conv block halves the frame
        if self.size < stride or self.size % stride:
            raise ValueError(
                f"size ({self.size}) must be a multiple of {stride} (2 ** number of channels)"
            )
