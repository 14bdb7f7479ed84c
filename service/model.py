"""The ONNX step model: its self-description, and one recurrent step at a time.

Everything the service knows about a model (labels, input size, fps, the
names and shapes of its recurrent state) comes from the file's
`metadata_props`, written by training/export.py. A file that does not carry
them is refused at load with a message naming the file and the key, because a
server that starts with a wrong label order fails silently, not loudly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

FORMAT_VERSION = "1"
PIXEL_FORMAT = "BGR"  # what OpenCV decodes to, so the service never converts colour
INPUT_FRAMES = "frames"
OUTPUT_LOGITS = "logits"
_PREFIX = "actionstream."
_ORT_FLOAT = "tensor(float)"
_ORT_UINT8 = "tensor(uint8)"


class ModelError(Exception):
    """A model file that cannot be served, with the reason in words."""


def bundled_model_path() -> Path:
    """The default model shipped inside the `service` package."""
    return Path(str(files("service") / "models" / "default.onnx"))


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: fed as `input`, returned as `output`, per-stream `shape`."""

    input: str
    output: str
    shape: tuple[int, ...]  # without the leading batch dimension


@dataclass(frozen=True)
class ModelMetadata:
    """The model's contract with the service, parsed from ONNX `metadata_props`."""

    labels: tuple[str, ...]
    height: int
    width: int
    fps: float
    background_label: str | None
    states: tuple[StateSpec, ...]
    version: str

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> ModelMetadata:
        """Parses and validates the props; `source` (the file) prefixes every error."""
        reader = _PropReader(props, source)
        fmt = reader.text("format_version")
        if fmt != FORMAT_VERSION:
            raise reader.error(
                "format_version", f"is {fmt!r}; this service reads {FORMAT_VERSION!r}"
            )
        pixel_format = reader.text("pixel_format")
        if pixel_format != PIXEL_FORMAT:
            raise reader.error(
                "pixel_format", f"is {pixel_format!r}; this service feeds {PIXEL_FORMAT}"
            )

        labels = reader.json("labels")
        if not (
            isinstance(labels, list)
            and labels
            and all(isinstance(x, str) and x for x in labels)
            and len(set(labels)) == len(labels)
        ):
            raise reader.error("labels", "must be a non-empty JSON list of distinct label names")

        size = reader.json("input_size")
        if not (
            isinstance(size, dict)
            and _positive_int(size.get("height"))
            and _positive_int(size.get("width"))
        ):
            raise reader.error("input_size", 'must be JSON like {"height": 64, "width": 64}')

        fps_text = reader.text("fps")
        try:
            fps = float(fps_text)
        except ValueError:
            fps = math.nan
        if not (math.isfinite(fps) and fps > 0):
            raise reader.error("fps", f"must be a positive number, got {fps_text!r}")

        background = props.get(_PREFIX + "background_label", "")
        if background and background not in labels:
            raise reader.error("background_label", f"{background!r} is not one of the labels")

        version = reader.text("model_version")
        if not version:
            raise reader.error("model_version", "must not be empty")

        return cls(
            labels=tuple(labels),
            height=size["height"],
            width=size["width"],
            fps=fps,
            background_label=background or None,
            states=_parse_states(reader),
            version=version,
        )


class _PropReader:
    """Looks up `actionstream.*` keys and words errors the same way for each."""

    def __init__(self, props: Mapping[str, str], source: str) -> None:
        self._props = props
        self._source = source

    def error(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self._source}: metadata {_PREFIX}{key} {problem}")

    def text(self, key: str) -> str:
        if _PREFIX + key not in self._props:
            if not any(k.startswith(_PREFIX) for k in self._props):
                raise ModelError(
                    f"{self._source}: not an actionstream model (no {_PREFIX}* metadata; "
                    "export it with `actionstream export`)"
                )
            raise ModelError(f"{self._source}: metadata {_PREFIX}{key} is missing")
        return self._props[_PREFIX + key]

    def json(self, key: str) -> Any:
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError as e:
            raise self.error(key, f"is not valid JSON ({e})") from None


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _parse_states(reader: _PropReader) -> tuple[StateSpec, ...]:
    raw = reader.json("states")
    if not (isinstance(raw, list) and raw):
        raise reader.error("states", "must be a non-empty JSON list")
    specs = []
    for i, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("input"), str)
            and isinstance(item.get("output"), str)
            and isinstance(item.get("shape"), list)
            and all(_positive_int(d) for d in item["shape"])
        ):
            raise reader.error(
                "states",
                f'entry {i} must look like {{"input": "h", "output": "h_out", "shape": [1, 128]}}',
            )
        specs.append(StateSpec(item["input"], item["output"], tuple(item["shape"])))
    return tuple(specs)


def _providers() -> list[str]:
    # CUDA when this onnxruntime build has it; CPU always last as the fallback.
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class StepModel:
    """One step of the recurrence: (frames, state) -> (logits, next state), batch-first.

    Frames and every state tensor share the leading batch axis N, so several
    streams can be stacked into one call. Calls are not serialised here: the
    server gives the model one thread of its own.
    """

    def __init__(self, session: ort.InferenceSession, metadata: ModelMetadata, path: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self._output_names = [OUTPUT_LOGITS, *(s.output for s in metadata.states)]

    @classmethod
    def load(cls, path: Path | str | None = None, threads: int = 0) -> StepModel:
        """Loads, validates and warms up a model; None loads the bundled default.

        `threads` is onnxruntime's intra-op thread count (0: its own choice).
        Raises ModelError with the file name and the reason for any file that
        is missing, not ONNX, or not an actionstream step model.
        """
        path = bundled_model_path() if path is None else Path(path)
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one step is a chain of ops; nothing to run side by side
        # onnxruntime's load errors (InvalidProtobuf, Fail, ...) share no base below Exception.
        try:
            session = ort.InferenceSession(str(path), options, providers=_providers())
        except Exception as e:
            raise ModelError(f"{path}: not a loadable ONNX model ({e})") from None
        metadata = ModelMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        model = cls(session, metadata, path)
        model._check_signature()
        model.step(np.zeros((1, metadata.height, metadata.width, 3), np.uint8), model.zero_state(1))
        return model

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    def zero_state(self, n: int) -> dict[str, np.ndarray]:
        """The state that starts `n` streams: zeros, keyed by input name."""
        return {s.input: np.zeros((n, *s.shape), np.float32) for s in self.metadata.states}

    def step(
        self, frames: np.ndarray, state: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Runs one step for N streams: frames uint8 (N, H, W, 3) BGR at the model's size.

        Returns logits (N, C) and the next state, keyed like `state`.
        """
        m = self.metadata
        if frames.dtype != np.uint8 or frames.shape[1:] != (m.height, m.width, 3):
            raise ValueError(
                f"frames must be uint8 (N, {m.height}, {m.width}, 3), "
                f"got {frames.dtype} {tuple(frames.shape)}"
            )
        feeds = {INPUT_FRAMES: frames, **state}
        logits, *outputs = self.session.run(self._output_names, feeds)
        return logits, {s.input: out for s, out in zip(m.states, outputs, strict=True)}

    def _check_signature(self) -> None:
        """The graph's inputs and outputs must be the ones its metadata describes."""
        m = self.metadata
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        expected_inputs = {INPUT_FRAMES, *(s.input for s in m.states)}
        if set(inputs) != expected_inputs:
            raise ModelError(
                f"{self.path}: graph inputs {sorted(inputs)} do not match the metadata "
                f"(frames + states: {sorted(expected_inputs)})"
            )
        missing = [n for n in self._output_names if n not in outputs]
        if missing:
            raise ModelError(f"{self.path}: graph has no output(s) {missing} named in the metadata")
        _check_tensor(self.path, inputs[INPUT_FRAMES], _ORT_UINT8, (m.height, m.width, 3))
        _check_tensor(self.path, outputs[OUTPUT_LOGITS], _ORT_FLOAT, (len(m.labels),))
        for s in m.states:
            _check_tensor(self.path, inputs[s.input], _ORT_FLOAT, s.shape)
            _check_tensor(self.path, outputs[s.output], _ORT_FLOAT, s.shape)


def _check_tensor(path: Path, arg: ort.NodeArg, dtype: str, shape: tuple[int, ...]) -> None:
    # Symbolic dimensions (strings or None) are accepted; fixed ones must agree.
    dims = list(arg.shape)
    fits = len(dims) == len(shape) + 1 and all(
        not isinstance(d, int) or d == want for d, want in zip(dims[1:], shape, strict=True)
    )
    if arg.type != dtype or not fits:
        raise ModelError(
            f"{path}: {arg.name} is {arg.type} {dims}; "
            f"the metadata implies {dtype} [N, {', '.join(map(str, shape))}]"
        )
