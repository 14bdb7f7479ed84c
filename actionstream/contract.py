"""The model contract: what an exported step model says about itself, written once.

Training writes it into the ONNX file's `metadata_props` when it exports; the
service reads it back when it loads the file, and configures itself from it
alone (labels, input size, fps, the recurrent state's layout). Neither side
spells a key, a tensor name or a state shape anywhere else. This module
imports neither torch nor onnxruntime, so both sides (and tools that only
inspect files) can use it.

The step model itself, batch-first so streams stack along axis 0:

    frames  uint8 [N, H, W, 3] BGR  ─┐            ┌─► logits [N, C]
    <state> float32 [N, ...]  (each) ┴─► one step ┴─► <state>_out float32 [N, ...] (each)

Colour order, scaling and normalisation happen inside the graph.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT_VERSION = "2"
PIXEL_FORMAT = "BGR"  # what OpenCV decodes to, so the service never converts colour
INPUT_FRAMES = "frames"
OUTPUT_LOGITS = "logits"
KEY_PREFIX = "actionstream."


class ContractError(ValueError):
    """Metadata that breaks the contract; the message names the file and the key."""


def state_output(name: str) -> str:
    """The output that returns state input `name` for the next step."""
    return f"{name}_out"


# The recurrent cells a recogniser can have; "frame-only" is the baseline with
# none (and no frame difference either): what a single frame can tell.
CELLS = ("gru", "lstm", "rnn", "frame-only")


@dataclass(frozen=True)
class ModelConfig:
    """The recogniser's architecture: enough to rebuild the network from an exported file."""

    num_classes: int
    height: int = 64
    width: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 64)  # one stride-2 conv block each
    hidden: int = 128  # recurrent state size
    embed: int = 128  # per-frame feature size fed to the recurrent cell
    cell: str = "gru"  # one of CELLS
    appearance: bool = True  # the CNN sees each frame as well as its difference from the last
    layers: int = 1  # stacked recurrent layers
    dropout: float = 0.0  # on the features into and out of the cell, and between layers
    # Normalisation of 0..255 pixels, applied inside the graph.
    mean: float = 127.5
    std: float = 64.0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {', '.join(CELLS)}, got {self.cell!r}")
        if self.layers < 1:
            raise ValueError(f"layers must be at least 1, got {self.layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ModelConfig:
        """From `dataclasses.asdict` output read back from JSON (lists become tuples)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}")
        values = dict(raw)
        if "channels" in values:
            values["channels"] = tuple(values["channels"])
        return cls(**values)


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: fed as `input`, returned as `output`, per-stream `shape`."""

    input: str
    shape: tuple[int, ...]  # without the leading batch dimension

    @property
    def output(self) -> str:
        return state_output(self.input)


@dataclass(frozen=True)
class ModelSpec:
    """Everything an exported step model says about itself."""

    labels: tuple[str, ...]
    fps: float  # the frame rate it was trained at
    background_label: str | None  # the label that means "no action", if it has one
    states: tuple[StateSpec, ...]
    version: str
    model: ModelConfig
    train_config: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return self.model.height

    @property
    def width(self) -> int:
        return self.model.width


def write_props(spec: ModelSpec) -> dict[str, str]:
    """The spec as ONNX `metadata_props` (string to string)."""
    states = [{"input": s.input, "output": s.output, "shape": list(s.shape)} for s in spec.states]
    return {
        _key("format_version"): FORMAT_VERSION,
        _key("labels"): json.dumps(list(spec.labels)),
        _key("input_size"): json.dumps({"height": spec.height, "width": spec.width}),
        _key("pixel_format"): PIXEL_FORMAT,
        _key("fps"): repr(float(spec.fps)),
        _key("background_label"): spec.background_label or "",
        _key("states"): json.dumps(states),
        _key("model_version"): spec.version,
        _key("model_config"): json.dumps(dataclasses.asdict(spec.model), sort_keys=True),
        _key("train_config"): json.dumps(spec.train_config, sort_keys=True),
        _key("eval"): json.dumps(spec.eval, sort_keys=True),
    }


def read_props(props: Mapping[str, str], source: str) -> ModelSpec:
    """Parses and validates `metadata_props`; `source` (the file) prefixes every error.

    Raises ContractError saying which key is missing or wrong, because a
    server that starts with a wrong label order fails silently, not loudly.
    """
    reader = _Reader(props, source)
    fmt = reader.text("format_version")
    if fmt != FORMAT_VERSION:
        raise reader.error(
            "format_version",
            f"is {fmt!r}; this version reads {FORMAT_VERSION!r} (export the model again)",
        )
    pixel_format = reader.text("pixel_format")
    if pixel_format != PIXEL_FORMAT:
        raise reader.error("pixel_format", f"is {pixel_format!r}; the service feeds {PIXEL_FORMAT}")

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

    background = props.get(_key("background_label"), "")
    if background and background not in labels:
        raise reader.error("background_label", f"{background!r} is not one of the labels")

    version = reader.text("model_version")
    if not version:
        raise reader.error("model_version", "must not be empty")

    model = _model_config(reader)
    if (model.height, model.width) != (size["height"], size["width"]):
        raise reader.error("model_config", f"says {model.height}x{model.width}; input_size differs")
    if model.num_classes != len(labels):
        raise reader.error(
            "model_config", f"has {model.num_classes} classes for {len(labels)} labels"
        )

    return ModelSpec(
        labels=tuple(labels),
        fps=fps,
        background_label=background or None,
        states=_states(reader),
        version=version,
        model=model,
        train_config=reader.json_object("train_config"),
        eval=reader.json_object("eval"),
    )


def _key(name: str) -> str:
    return KEY_PREFIX + name


class _Reader:
    """Looks up `actionstream.*` keys and words errors the same way for each."""

    def __init__(self, props: Mapping[str, str], source: str) -> None:
        self._props = props
        self._source = source

    def error(self, key: str, problem: str) -> ContractError:
        return ContractError(f"{self._source}: metadata {_key(key)} {problem}")

    def text(self, key: str) -> str:
        if _key(key) not in self._props:
            if not any(k.startswith(KEY_PREFIX) for k in self._props):
                raise ContractError(
                    f"{self._source}: not an actionstream model (no {KEY_PREFIX}* metadata; "
                    "export it with `actionstream export`)"
                )
            raise ContractError(f"{self._source}: metadata {_key(key)} is missing")
        return self._props[_key(key)]

    def json(self, key: str) -> Any:
        try:
            return json.loads(self.text(key))
        except json.JSONDecodeError as e:
            raise self.error(key, f"is not valid JSON ({e})") from None

    def json_object(self, key: str) -> dict[str, Any]:
        value = self.json(key)
        if not isinstance(value, dict):
            raise self.error(key, "must be a JSON object")
        return value


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _model_config(reader: _Reader) -> ModelConfig:
    raw = reader.json_object("model_config")
    try:
        return ModelConfig.from_dict(raw)
    except (TypeError, ValueError) as e:
        raise reader.error("model_config", f"is not a model config ({e})") from None


def _states(reader: _Reader) -> tuple[StateSpec, ...]:
    raw = reader.json("states")
    if not isinstance(raw, list):  # empty for a model without state (the frame-only baseline)
        raise reader.error("states", "must be a JSON list")
    specs = []
    for i, item in enumerate(raw):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("input"), str)
            and item.get("output") == state_output(item["input"])
            and isinstance(item.get("shape"), list)
            and all(_positive_int(d) for d in item["shape"])
        ):
            raise reader.error(
                "states",
                f'entry {i} must look like {{"input": "h", "output": "h_out", "shape": [1, 128]}}',
            )
        specs.append(StateSpec(item["input"], tuple(item["shape"])))
    return tuple(specs)
