"""The ONNX step model in onnxruntime: loaded, checked against its own description, stepped.

Everything the service knows about a model (labels, input size, fps, the
names and shapes of its recurrent state) comes from the file's
`metadata_props`, read through actionstream.contract. A file that does not
carry them is refused at load with a message naming the file and the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime as ort

from actionstream.contract import (
    INPUT_FRAMES,
    OUTPUT_LOGITS,
    ContractError,
    ModelSpec,
    read_props,
)

_ORT_FLOAT = "tensor(float)"
_ORT_UINT8 = "tensor(uint8)"


class ModelError(Exception):
    """A model file that cannot be served, with the reason in words."""


def bundled_model_path() -> Path:
    """The default model shipped inside the package."""
    return Path(str(files("actionstream.service") / "models" / "default.onnx"))


def _providers() -> list[str]:
    # CUDA when this onnxruntime build has it; CPU always last as the fallback.
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxStepModel:
    """One step of the recurrence: (frames, state) -> (logits, next state), batch-first.

    Frames and every state tensor share the leading batch axis N, so several
    streams can be stacked into one call. onnxruntime runs calls from several
    threads at once safely; the server's batch threads may step two batches
    side by side.
    """

    def __init__(self, session: ort.InferenceSession, metadata: ModelSpec, path: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self._output_names = [OUTPUT_LOGITS, *(s.output for s in metadata.states)]

    @classmethod
    def load(
        cls,
        path: Path | str | None = None,
        threads: int = 0,
        providers: Sequence[str] | None = None,
    ) -> OnnxStepModel:
        """Loads, validates and warms up a model; None loads the bundled default.

        `threads` is onnxruntime's intra-op thread count (0: its own choice).
        `providers`: onnxruntime's, in order of preference (None: CUDA where this
        build has it, then the CPU).
        Raises ModelError with the file name and the reason for any file that
        is missing, not ONNX, or not an actionstream step model.
        """
        path = bundled_model_path() if path is None else Path(path)
        _check_readable(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # one step is a chain of ops; nothing to run side by side
        # onnxruntime's load errors (InvalidProtobuf, Fail, ...) share no base below Exception.
        try:
            session = ort.InferenceSession(
                str(path), options, providers=_providers() if providers is None else providers
            )
        except Exception as e:
            raise ModelError(f"{path}: not a loadable ONNX model ({e})") from None
        try:
            metadata = read_props(session.get_modelmeta().custom_metadata_map, str(path))
        except ContractError as e:
            raise ModelError(str(e)) from None
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


def _check_readable(path: Path) -> None:
    """Raises ModelError, in words a user acts on, for a path that is not a model file
    this process can read. onnxruntime's own words for these are "system error number
    13" and "Protobuf parsing failed"."""
    export = "export it first: actionstream export RUN --out model.onnx"
    if path.is_dir():
        if (path / "checkpoint.pt").is_file():
            raise ModelError(f"{path}: a training run, not a model file; {export}")
        raise ModelError(f"{path}: a folder, not a model file")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelError(f"{path}: cannot read the model file ({e.strerror})") from None
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive
        raise ModelError(f"{path}: a PyTorch checkpoint, not an ONNX model; {export}")
