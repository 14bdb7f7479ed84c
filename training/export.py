"""Exports a trained recogniser as the ONNX step model the service runs.

The file is self-describing: labels, input size, fps, state layout, version
and the training config travel in `metadata_props`, so the service configures
itself from the model alone (actionstream/contract.py is the one definition).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from actionstream.contract import (
    INPUT_FRAMES,
    OUTPUT_LOGITS,
    ModelSpec,
    StateSpec,
    state_output,
    write_props,
)
from actionstream.service.inference.model import ModelError, OnnxStepModel
from actionstream.settings import resolved
from actionstream.training.checkpoint import Checkpoint
from actionstream.training.config import ExportConfig
from actionstream.training.model import Recognizer, StepModule
from actionstream.training.run_files import (
    CHECKPOINT,
    CHECKPOINT_CARD,
    EVALUATION,
    METRICS,
    PROGRESS,
    TRAIN_CONFIG,
)

DEFAULT_EXPORT = ExportConfig()


class ExportError(Exception):
    """An export that could not write a model that passes its checks; nothing was written."""


# A run folder's own files, which an export must never replace: `export RUN --out
# RUN/checkpoint.pt` destroyed the run, and a card named train_config.json its resume.
RUN_FILES = (CHECKPOINT, CHECKPOINT_CARD, PROGRESS, TRAIN_CONFIG, METRICS, EVALUATION)


def refuse_overwriting(run: Path, out: Path) -> None:
    """Refuses an `out` whose model or card (`out` with .json) would replace the checkpoint
    exported from, its card where it has one, or a file of its run folder."""
    source = run / CHECKPOINT if run.is_dir() else run
    card = out.with_suffix(".json")
    kept_files = [source, *(source.parent / name for name in RUN_FILES)]
    if source.with_suffix(".json").exists():
        kept_files.append(source.with_suffix(".json"))
    for kept in kept_files:
        for path in (out, card):
            if path.resolve() == kept.resolve() and (kept == source or kept.exists()):
                whose = f"--out {out}" if path == out else f"--out {out}: its card {card}"
                raise ExportError(
                    f"{whose} would replace {kept}, of the run it exports from; give the "
                    f"model another name (e.g. {source.parent / 'model.onnx'})"
                )


def model_spec(ckpt: Checkpoint, net: Recognizer) -> ModelSpec:
    """The file's self-description: the checkpoint's, with `net`'s state names and shapes."""
    shapes = [tuple(z.shape[1:]) for z in net.initial_state(1)]
    return ModelSpec(
        labels=ckpt.labels,
        fps=ckpt.fps,
        background_label=ckpt.background_label,
        states=tuple(
            StateSpec(name, shape) for name, shape in zip(net.state_names, shapes, strict=True)
        ),
        version=ckpt.version,
        model=ckpt.model_config,
        train_config=ckpt.train_config,
        eval=ckpt.eval_metrics,
    )


def export_onnx(ckpt: Checkpoint, out: Path, cfg: ExportConfig = DEFAULT_EXPORT) -> Path:
    """Writes the step model with its metadata to `out`, once it has passed the parity check.

    Raises ExportError if the exporter cannot write the opset asked for or ONNX and PyTorch
    disagree, OSError if `out` cannot be written; either way `out` is left untouched.
    """
    net = ckpt.build_model().eval()
    # An example batch of 2: torch.export would fix a batch dimension of size 1 as a constant.
    state = net.initial_state(2)
    frames = torch.zeros(2, net.cfg.height, net.cfg.width, 3, dtype=torch.uint8)
    n = torch.export.Dim("N", min=1, max=65536)
    names = net.state_names
    # torch.export takes no empty tuple as an input: a stateless model gets frames alone.
    args = (frames, state) if state else (frames,)
    dynamic = {"frames": {0: n}} | ({"state": tuple({0: n} for _ in state)} if state else {})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    card = out.with_suffix(".json")
    card_tmp = card.with_name(card.name + ".partial")
    if card.is_dir():  # found now, not once the model has replaced an earlier one
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(card))
    try:
        with _quiet_exporter():
            torch.onnx.export(
                StepModule(net).eval(),
                args,
                str(tmp),
                input_names=[INPUT_FRAMES, *names],
                output_names=[OUTPUT_LOGITS, *(state_output(name) for name in names)],
                dynamic_shapes=dynamic,
                opset_version=cfg.opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        model = onnx.load(str(tmp))
        # The exporter writes its own opset and converts; a conversion it cannot make it
        # only logs, and hands back the model unconverted.
        wrote = opset_of(model)
        if wrote != cfg.opset:
            raise ExportError(
                f"the ONNX exporter cannot write opset {cfg.opset} for this model (it wrote "
                f"{wrote}); 17, 18, 20, 23 and 25 were tried and work"
            )
        onnx.helper.set_model_props(model, write_props(model_spec(ckpt, net)))
        model.doc_string = "actionstream step model: frames + state -> logits + state"
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        diff = parity_error(net, tmp, cfg)
        if diff > cfg.tolerance:
            raise ExportError(f"ONNX parity failed: max |logit diff| {diff:.2e} > {cfg.tolerance}")
        # The card too is written before either file replaces an earlier one: a card
        # that cannot be written leaves the earlier model and card as they were.
        card_tmp.write_text(_card(out, ckpt, cfg))
        with _signals_held():  # the model and its card replace the earlier ones together
            tmp.replace(out)
            card_tmp.replace(card)
    except BaseException:
        tmp.unlink(missing_ok=True)
        card_tmp.unlink(missing_ok=True)
        raise
    return out


def opset_of(model: onnx.ModelProto) -> int | None:
    """The model's version of the default ONNX operator set."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then take effect as they would
    have. Held by Python handlers that only note them: a thread's signal mask would hold
    them on this thread alone, and the kernel hands a process's signal to any thread that
    does not block it (torch and onnxruntime keep several). Off the main thread, where
    handlers cannot be set, nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, lambda signum, _: came.append(signum)) for sig in held}
    try:
        yield
    finally:
        for sig, handler in before.items():
            # None: a handler set from C, which Python cannot put back; the default then.
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(came):
            signal.raise_signal(signum)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences the exporter's notices about torch internals (deprecations, optional
    torchvision ops); the parity check after the export is what guards the graph."""
    # onnxscript logs a conversion it cannot make with its traceback; export_onnx checks
    # the opset written and says so in one line. torch.export's fake tensors log any error
    # met while tracing, with its traceback, before raising it: a Ctrl-C there gave 100
    # lines before `export`'s own "interrupted" (seen once in CI), and a real failure is
    # told by the exception.
    names = ("torch.onnx", "onnxscript", "torch._subclasses.fake_tensor")
    logs = [logging.getLogger(name) for name in names]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)


def parity_error(net: Recognizer, onnx_path: Path, cfg: ExportConfig = DEFAULT_EXPORT) -> float:
    """Max abs logit difference: ONNX stepped frame by frame vs torch over the whole sequence.

    The file is loaded and stepped by the service's own loader, from the zero state its
    metadata describes: a file whose metadata or graph the server would refuse, or read
    otherwise than `net` means, fails here rather than where it is served.
    """
    gen = torch.Generator().manual_seed(0)
    B, T = cfg.parity_batch, cfg.parity_frames
    video = torch.randint(0, 256, (B, T, net.cfg.height, net.cfg.width, 3), generator=gen)
    video = video.to(torch.uint8)
    with torch.no_grad():
        expected, *_ = net.eval()(video, *net.initial_state(B))  # (B, T, classes)

    try:
        # On the CPU, as the PyTorch side runs: CUDA's convolutions may round as TF32 does.
        served = OnnxStepModel.load(onnx_path, providers=["CPUExecutionProvider"])
    except ModelError as e:
        raise ExportError(f"the service would not load the exported model: {e}") from None
    state = served.zero_state(B)
    got = []
    for t in range(T):
        logits, state = served.step(video[:, t].numpy(), state)  # (B, classes)
        got.append(logits)
    stepped = np.stack(got, axis=1)  # T x (B, classes) -> (B, T, classes)
    return float(np.abs(stepped - expected.numpy()).max())


def _card(out: Path, ckpt: Checkpoint, cfg: ExportConfig) -> str:
    """The model's card, `out` with .json: the resolved configs beside the artifact, for
    people and tools that do not parse ONNX."""
    card: dict[str, Any] = {
        "version": ckpt.version,
        "labels": list(ckpt.labels),
        "fps": ckpt.fps,
        "background_label": ckpt.background_label,
        "model_config": asdict(ckpt.model_config),
        "train_config": ckpt.train_config,
        # Paths as absolute as train_config's: the card is read from anywhere.
        "export_config": resolved(cfg, out=str(out)),
        "eval": ckpt.eval_metrics,
    }
    return json.dumps(card, indent=2, sort_keys=True) + "\n"
