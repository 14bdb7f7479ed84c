"""One config per training-side stage: synth, train, evaluate, export.

Plain dataclasses, no torch, so the command line can build its flags (and
answer `--help` or a bad value) without loading torch. Each validates itself
in `__post_init__`; the resolved config is saved beside what its stage writes.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from actionstream.contract import CELLS
from actionstream.settings import (
    refuse_empty_paths,
    refuse_non_finite,
    refuse_out_of_range,
    setting,
)

# A run folder, as `train` writes it and `evaluate` / `export` read it.
DEFAULT_RUN = "runs/default"
# Decoded frames of the user's videos, kept between runs: in the user's cache folder.
DEFAULT_FRAME_CACHE = str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "actionstream" / "frames"
)
# `--init` by name; anything else is a run folder or checkpoint to start from.
INIT_CHOICES = ("auto", "pretrained", "scratch")
# The largest --size: 256 times the bundled model's 64 x 64 frames; far past it, a decoded
# video's frames outgrew memory (100000 ended in OpenCV's out-of-memory traceback).
MAX_SIZE = 1024
# Containers OpenCV's FFmpeg reads (a manifest may name any other file); here, not beside
# the decoder, so that a config can tell a video from a folder or manifest without it.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".avi", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".wmv", ".ts")


@dataclass(frozen=True)
class SynthVideoConfig:
    """`actionstream synth`: a labelled synthetic video to stream or test with."""

    out: str = setting(help="output video path (.avi, MJPG); labels go beside it as .csv")
    seconds: float = setting(30.0, help="length of the video")
    fps: float = setting(10.0, help="frame rate")
    size: int = setting(64, help="frame side in pixels")
    seed: int = setting(0, help="seed of the scene and its actions")

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        _require_positive(self, "seconds", "fps")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 pixels, got {self.size}")


@dataclass(frozen=True)
class TrainConfig:
    """`actionstream train`: truncated BPTT over untrimmed synthetic streams."""

    out: str = setting(
        DEFAULT_RUN, help="run folder for checkpoint and configs", group="Run", path=True
    )
    seed: int = setting(0, help="seeds data, init and batch order", group="Run", at_least=0)
    threads: int = setting(0, help="torch CPU threads (0: all cores)", group="Run", at_least=0)
    device: str = setting(
        "auto", help="auto (CUDA when torch sees a GPU, else CPU), cpu or cuda", group="Run"
    )
    init: str = setting(
        "auto",
        help="where the CNN starts: pretrained (the motion encoder learnt from the synthetic "
        "world, which ships with the package), scratch, auto (pretrained when the model's "
        "encoder has its shape, else scratch), or a run folder or checkpoint.pt of yours to "
        "fine-tune from (its CNN, its cell when it fits, its head when its labels are these)",
        group="Run",
        path=True,
        not_paths=INIT_CHOICES,
    )
    resume: bool = setting(
        False,
        help="carry on the run in --out from its last saved epoch, with the settings it was "
        "started with (only --epochs, --minutes, --device, --threads and --cache may change, "
        "and --data and --split to where the same videos are now); a run that --minutes "
        "stopped goes on from the epoch after the one the clock cut short; a new --epochs or "
        "--minutes starts a new learning-rate cycle from the rate the run had reached",
        group="Run",
    )
    minutes: float = setting(
        0.0,
        help="stop after this many minutes of training, a resumed run's earlier time "
        "included, and keep the best epoch so far (0: no limit)",
        group="Run",
    )
    # Data: untrimmed streams, each cut into BPTT chunks.
    data: str | None = setting(
        None,
        help="your videos: a folder of class folders (DIR/<label>/..., videos in subfolders "
        "too: .mp4 .m4v .avi .mkv .webm .mov .mpg .mpeg .wmv .ts) or a CSV manifest "
        "(path,label[,start_s,end_s]); unset trains on the synthetic world",
        group="Data",
        path=True,
    )
    background: str | None = setting(
        None,
        help="the label in --data that means 'no action'; its clips go between actions",
        group="Data",
    )
    val_fraction: float = setting(
        0.2, help="share of each label's videos held out for validation", group="Data"
    )
    split: str | None = setting(
        None,
        help="a CSV (path,split with split train or val) fixing which videos are held out, "
        "instead of --val-fraction (not with it)",
        group="Data",
        path=True,
    )
    cache: str = setting(
        DEFAULT_FRAME_CACHE,
        help="where decoded video frames are kept between epochs and runs",
        group="Data",
        path=True,
    )
    train_streams: int = setting(
        1024,
        help="training streams per epoch (synthetic: rendered once)",
        group="Data",
        at_least=1,
    )
    stream_frames: int = setting(160, help="frames per training stream", group="Data", at_least=1)
    bptt: int = setting(
        40,
        help="frames per truncated-BPTT chunk; state carries across chunks",
        group="Data",
        at_least=1,
    )
    val_streams: int = setting(
        32, help="held-out streams scored after each epoch", group="Data", at_least=1
    )
    val_frames: int = setting(300, help="frames per held-out stream", group="Data", at_least=1)
    size: int = setting(64, help="frame side, pixels (model input is size x size)", group="Data")
    fps: float = setting(10.0, help="frame rate the model is trained at", group="Data")
    boundary_ignore: int = setting(
        2,
        help="frames after an action change left out of the loss (nobody can know yet)",
        group="Data",
        at_least=0,
    )
    channels: tuple[int, ...] = setting(
        (16, 32, 64, 64), help="CNN widths, one stride-2 block each", group="Model"
    )
    embed: int = setting(128, help="per-frame feature size", group="Model", at_least=1)
    cell: str = setting(
        "gru",
        help="recurrent cell: gru, lstm or rnn (plain tanh); frame-only is the baseline "
        "with no recurrence and no frame difference",
        group="Model",
    )
    appearance: bool = setting(
        False,
        help="show the CNN each frame as well as its difference from the previous one "
        "(the bundled synthetic model does); by default it sees the difference alone, "
        "so it cannot learn a small data set's backgrounds instead of its actions",
        group="Model",
    )
    hidden: int = setting(128, help="recurrent state size", group="Model", at_least=1)
    layers: int = setting(1, help="stacked recurrent layers", group="Model", at_least=1)
    dropout: float = setting(
        0.0, help="dropout on the features into and out of the cell", group="Model"
    )
    # Six passes of 1,024 streams: a 600-clip data set of users' videos trains in
    # about 9 minutes on a 2-core CPU; the bundled synthetic model takes 12 (make model).
    epochs: int = setting(
        6, help="passes over the training streams", group="Optimisation", at_least=1
    )
    batch_size: int = setting(32, help="streams per batch", group="Optimisation", at_least=1)
    lr: float = setting(3e-3, help="peak AdamW learning rate (one-cycle)", group="Optimisation")
    weight_decay: float = setting(1e-4, help="AdamW weight decay", group="Optimisation", at_least=0)
    grad_clip: float = setting(
        1.0, help="max gradient norm (BPTT can explode)", group="Optimisation"
    )

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        refuse_empty_paths(self)
        refuse_out_of_range(self)
        if self.batch_size > self.train_streams:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed "
                f"train_streams ({self.train_streams})"
            )
        _require_positive(self, "fps", "lr", "grad_clip")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be above 0 and below 1, got {self.val_fraction}: training "
                "keeps the epoch that does best on held-out videos, so some must be held out"
            )
        if self.minutes < 0:
            raise ValueError(f"minutes must not be negative, got {self.minutes}")
        # A resumed run has its weights already: the run it started from may be gone.
        if self.init not in INIT_CHOICES and not self.resume and not Path(self.init).exists():
            raise ValueError(
                f"init must be auto, pretrained, scratch or a run folder or checkpoint, got "
                f"{self.init!r} (no such file or folder)"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.boundary_ignore >= self.stream_frames:
            # loss_targets leaves out a stream's first frames as it does those after a
            # change: no frame of any stream would count, and every epoch's loss be NaN.
            raise ValueError(
                f"boundary_ignore ({self.boundary_ignore}) must be below stream_frames "
                f"({self.stream_frames}): the loss leaves out each stream's first "
                f"{self.boundary_ignore} frame(s), so no frame would be learnt from"
            )
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be positive widths, got {self.channels}")
        # Any side in between: each conv block rounds half the side up (model.py), and the
        # shipped encoder, --init RUN and the server go by the model's own size.
        if self.size < 1:
            raise ValueError(f"size must be at least 1 pixel, got {self.size}")
        if self.size > MAX_SIZE:
            raise ValueError(
                f"size must be at most {MAX_SIZE} pixels, got {self.size}: every frame is "
                "resized to size x size for the model"
            )


@dataclass(frozen=True)
class EvaluateConfig:
    """`actionstream evaluate`: a checkpoint scored on held-out synthetic streams."""

    run: str = setting(DEFAULT_RUN, help="run folder or checkpoint.pt", positional=True, path=True)
    data: str | None = setting(
        None,
        help="videos to score: class folders or a CSV manifest (as for train), or one "
        "untrimmed video labelled per frame by a frame,label CSV; unset: synthetic streams",
        path=True,
    )
    labels: str | None = setting(
        None,
        help="the frame,label CSV of a --data video (default: the video's name, .csv)",
        path=True,
    )
    cache: str = setting(DEFAULT_FRAME_CACHE, help="where decoded video frames are kept", path=True)
    streams: int = setting(32, help="synthetic: held-out streams, each scored frame by frame")
    seconds: float = setting(60.0, help="synthetic: length of each held-out stream")
    seed: int = setting(10_000, help="seed of the synthetic data, and of the clip order")
    out: str | None = setting(
        None,
        help="folder for evaluation.json and its plots, made if missing (so that scores on "
        "other data do not replace the run's own); unset: the run folder",
        path=True,
    )

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        refuse_empty_paths(self)
        refuse_out_of_range(self)
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, got {self.streams}")
        if self.seed < 0:  # numpy's generators take none
            raise ValueError(f"seed must not be negative, got {self.seed}")
        _require_positive(self, "seconds")
        # Only one untrimmed video is labelled by a CSV of its own: other data carries its
        # labels, and was scored on them with --labels ignored, unsaid.
        if self.labels is not None:
            if self.data is None:
                raise ValueError(
                    "labels is the frame,label CSV of a --data video file, and no --data was "
                    "given: the synthetic streams carry their own labels"
                )
            if Path(self.data).suffix.lower() not in VIDEO_SUFFIXES:
                raise ValueError(
                    f"labels is the frame,label CSV of a --data video file, and {self.data} "
                    f"is not one ({' '.join(VIDEO_SUFFIXES)}): class folders and manifests "
                    "carry their own labels"
                )


@dataclass(frozen=True)
class ExportConfig:
    """`actionstream export`: a checkpoint as the ONNX step model, parity-checked."""

    run: str = setting(DEFAULT_RUN, help="run folder or checkpoint.pt", positional=True, path=True)
    out: str = setting(
        "model.onnx", help="output .onnx path; its .json card goes beside it", path=True
    )
    opset: int = setting(18, help="ONNX opset")
    parity_frames: int = setting(24, help="frames stepped through ONNX for the parity check")
    parity_batch: int = setting(2, help="streams in the parity check")
    tolerance: float = setting(
        1e-4, help="largest |logit difference| allowed, ONNX steps vs PyTorch sequence"
    )

    def __post_init__(self) -> None:
        refuse_non_finite(self)
        refuse_empty_paths(self)
        refuse_out_of_range(self)
        if self.parity_frames < 2 or self.parity_batch < 1:
            raise ValueError("parity_frames must be at least 2 and parity_batch at least 1")
        if not (math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ValueError(f"tolerance must be a positive number, got {self.tolerance}")
        if self.opset < 1:
            raise ValueError(f"opset must be a positive ONNX opset version, got {self.opset}")
        # The card is `out` with .json: a .json model would be its own card, and the
        # card written last replaced it (and any file of that name) with no model left.
        if Path(self.out).suffix.lower() == ".json":
            raise ValueError(
                f"out must not end in .json, got {self.out!r}: the model's card goes beside "
                f"it as .json; name the model e.g. {Path(self.out).with_suffix('.onnx')}"
            )


def _require_positive(cfg: object, *names: str) -> None:
    for name in names:
        if not getattr(cfg, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}")
