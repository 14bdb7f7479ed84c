"""Exports a trained recogniser as the ONNX step model the service runs.

The file is self-describing: labels, input size, fps, state layout, version
and the training config travel in `metadata_props`, so the service configures
itself from the model alone (actionstream/contract.py is the one definition).
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from actionstream.contract import (
    INPUT_FRAMES,
    OUTPUT_LOGITS,
    ModelSpec,
    StateSpec,
    state_output,
    write_props,
)
from actionstream.training.checkpoint import Checkpoint
from actionstream.training.config import ExportConfig
from actionstream.training.model import ActionRecognizer, StepModule

DEFAULT_EXPORT = ExportConfig()

# The recogniser's state, in the order StepModule takes and returns it.
STATE_NAMES = ("h", "prev_frame")


def model_spec(ckpt: Checkpoint, state_shapes: dict[str, tuple[int, ...]]) -> ModelSpec:
    """The file's self-description; `state_shapes` maps each state input to its shape sans N."""
    return ModelSpec(
        labels=ckpt.labels,
        fps=ckpt.fps,
        background_label=ckpt.background_label,
        states=tuple(StateSpec(name, state_shapes[name]) for name in STATE_NAMES),
        version=ckpt.version,
        model=ckpt.model_config,
        train_config=ckpt.train_config,
        eval=ckpt.eval_metrics,
    )


def export_onnx(ckpt: Checkpoint, out: Path, cfg: ExportConfig = DEFAULT_EXPORT) -> Path:
    """Writes the step model with its metadata to `out`, once it has passed the parity check.

    Raises RuntimeError (and leaves `out` untouched) if ONNX and PyTorch disagree.
    """
    net = ckpt.build_model().eval()
    # An example batch of 2: torch.export would fix a batch dimension of size 1 as a constant.
    h, prev = net.initial_state(2)
    frames = torch.zeros(2, net.cfg.height, net.cfg.width, 3, dtype=torch.uint8)
    n = torch.export.Dim("N", min=1, max=65536)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with _quiet_exporter():
        torch.onnx.export(
            StepModule(net).eval(),
            (frames, h, prev),
            str(tmp),
            input_names=[INPUT_FRAMES, *STATE_NAMES],
            output_names=[OUTPUT_LOGITS, *(state_output(name) for name in STATE_NAMES)],
            dynamic_shapes={INPUT_FRAMES: {0: n}, **{name: {0: n} for name in STATE_NAMES}},
            opset_version=cfg.opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    model = onnx.load(str(tmp))
    shapes = {"h": tuple(h.shape[1:]), "prev_frame": tuple(prev.shape[1:])}
    onnx.helper.set_model_props(model, write_props(model_spec(ckpt, shapes)))
    model.doc_string = "actionstream CNN-GRU step model: frames + state -> logits + state"
    onnx.checker.check_model(model)
    onnx.save(model, str(tmp))
    try:
        diff = parity_error(net, tmp, cfg)
        if diff > cfg.tolerance:
            raise RuntimeError(f"ONNX parity failed: max |logit diff| {diff:.2e} > {cfg.tolerance}")
    except BaseException:
        tmp.unlink()
        raise
    tmp.replace(out)
    _write_sidecar(out, ckpt, cfg)
    return out


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silences the exporter's notices about torch internals (deprecations, optional
    torchvision ops); the parity check after the export is what guards the graph."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def parity_error(
    net: ActionRecognizer, onnx_path: Path, cfg: ExportConfig = DEFAULT_EXPORT
) -> float:
    """Max abs logit difference: ONNX stepped frame by frame vs torch over the whole sequence."""
    gen = torch.Generator().manual_seed(0)
    B, T = cfg.parity_batch, cfg.parity_frames
    video = torch.randint(0, 256, (B, T, net.cfg.height, net.cfg.width, 3), generator=gen)
    video = video.to(torch.uint8)
    with torch.no_grad():
        expected, _, _ = net.eval()(video, *net.initial_state(B))  # (B, T, classes)

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h, prev = (s.numpy() for s in net.initial_state(B))
    got = []
    for t in range(T):
        logits, h, prev = session.run(
            None, {INPUT_FRAMES: video[:, t].numpy(), STATE_NAMES[0]: h, STATE_NAMES[1]: prev}
        )
        got.append(logits)
    stepped = np.stack(got, axis=1)  # T x (B, classes) -> (B, T, classes)
    return float(np.abs(stepped - expected.numpy()).max())


def _write_sidecar(out: Path, ckpt: Checkpoint, cfg: ExportConfig) -> None:
    # The resolved configs beside the artifact, for people and tools that do not parse ONNX.
    card: dict[str, Any] = {
        "version": ckpt.version,
        "labels": list(ckpt.labels),
        "fps": ckpt.fps,
        "background_label": ckpt.background_label,
        "model_config": asdict(ckpt.model_config),
        "train_config": ckpt.train_config,
        "export_config": asdict(cfg),
        "eval": ckpt.eval_metrics,
    }
    out.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
