"""Loading the ONNX step model: it configures itself from its metadata, or refuses clearly."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from actionstream.contract import ContractError, read_props
from actionstream.service.inference.model import ModelError, OnnxStepModel, bundled_model_path

# onnx (to write doctored model files) comes with the train extra.
onnx = pytest.importorskip("onnx")


def _props() -> dict[str, str]:
    model = onnx.load(str(bundled_model_path()), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _save_with_props(tmp_path: Path, props: dict[str, str]) -> Path:
    model = onnx.load(str(bundled_model_path()))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    out = tmp_path / "model.onnx"
    onnx.save(model, str(out))
    return out


def test_metadata_of_the_bundled_model(model: OnnxStepModel) -> None:
    props = _props()
    meta = model.metadata
    assert list(meta.labels) == json.loads(props["actionstream.labels"])
    size = json.loads(props["actionstream.input_size"])
    assert (meta.height, meta.width) == (size["height"], size["width"])
    assert meta.fps == float(props["actionstream.fps"])
    assert meta.background_label == (props["actionstream.background_label"] or None)
    assert meta.version == props["actionstream.model_version"]
    states = json.loads(props["actionstream.states"])
    assert [(s.input, s.output, list(s.shape)) for s in meta.states] == [
        (s["input"], s["output"], s["shape"]) for s in states
    ]


def test_step_carries_state_per_row(model: OnnxStepModel) -> None:
    meta = model.metadata
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, meta.height, meta.width, 3), dtype=np.uint8)
    logits, state = model.step(frames, model.zero_state(2))
    assert logits.shape == (2, len(meta.labels))
    assert set(state) == {s.input for s in meta.states}
    # Row 1 alone gives what row 1 of the batch gave: streams in a batch do not mix.
    alone, _ = model.step(frames[1:], model.zero_state(1))
    np.testing.assert_allclose(alone[0], logits[1], atol=1e-5)
    # The state is carried: the same frame after another one answers differently.
    again, _ = model.step(frames[1:], {k: v[1:] for k, v in state.items()})
    assert not np.allclose(again[0], alone[0])


def test_step_refuses_frames_of_the_wrong_size(model: OnnxStepModel) -> None:
    with pytest.raises(ValueError, match=r"frames must be uint8 \(N, 64, 64, 3\)"):
        model.step(np.zeros((1, 32, 32, 3), np.uint8), model.zero_state(1))


def test_a_file_that_is_not_onnx_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for")
    with pytest.raises(ModelError, match="not a loadable ONNX model") as err:
        OnnxStepModel.load(path)
    assert str(path) in str(err.value)


def test_a_missing_file_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model file"):
        OnnxStepModel.load(tmp_path / "absent.onnx")


def test_what_is_not_a_model_file_says_what_it_is(tmp_path: Path) -> None:
    # onnxruntime's own words were "no such model file" for a run folder and
    # "Protobuf parsing failed" for its checkpoint: both need an export first.
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    with zipfile.ZipFile(run / "checkpoint.pt", "w") as z:  # as torch.save writes one
        z.writestr("archive/data.pkl", b"")
    with pytest.raises(ModelError, match=r"mine: a training run, not a model file; export"):
        OnnxStepModel.load(run)
    with pytest.raises(ModelError, match=r"checkpoint.pt: a PyTorch checkpoint, not an ONNX"):
        OnnxStepModel.load(run / "checkpoint.pt")
    with pytest.raises(ModelError, match=r"runs: a folder, not a model file"):
        OnnxStepModel.load(tmp_path / "runs")


def test_onnx_without_actionstream_metadata_is_refused(tmp_path: Path) -> None:
    path = _save_with_props(tmp_path, {"producer": "someone else"})
    with pytest.raises(ModelError, match=r"not an actionstream model \(no actionstream\.\*"):
        OnnxStepModel.load(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("actionstream.labels", None, "actionstream.labels is missing"),
        ("actionstream.labels", "[idle", "actionstream.labels is not valid JSON"),
        ("actionstream.labels", '["a", "a"]', "distinct label names"),
        ("actionstream.input_size", '{"height": 64}', "actionstream.input_size must be JSON"),
        ("actionstream.fps", "fast", "actionstream.fps must be a positive number, got 'fast'"),
        ("actionstream.format_version", "1", "format_version is '1'; this version reads '2'"),
        ("actionstream.model_config", '{"num_classes": 9, "depth": 3}', "not a model config"),
        ("actionstream.model_config", '{"num_classes": 4}', "has 4 classes for 9 labels"),
        ("actionstream.pixel_format", "RGB", "pixel_format is 'RGB'"),
        ("actionstream.states", '[{"input": "h"}]', "actionstream.states entry 0"),
        ("actionstream.background_label", "nothing", "'nothing' is not one of the labels"),
    ],
)
def test_bad_metadata_names_the_key(key: str, value: str | None, message: str) -> None:
    props = _props()
    if value is None:
        del props[key]
    else:
        props[key] = value
    with pytest.raises(ContractError, match=message) as err:
        read_props(props, "cam.onnx")
    assert str(err.value).startswith("cam.onnx: ")


def test_metadata_that_disagrees_with_the_graph_is_refused(tmp_path: Path) -> None:
    props = _props()
    states = json.loads(props["actionstream.states"])
    states[0]["shape"] = [1, 64]  # the graph's h is [N, 1, 128]
    props["actionstream.states"] = json.dumps(states)
    with pytest.raises(ModelError, match=r"h is tensor\(float\) \['N', 1, 128\]"):
        OnnxStepModel.load(_save_with_props(tmp_path, props))
