"""The exported ONNX step model must be the PyTorch model, one frame at a time."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")  # with torch, in the training extras

from background import BackgroundServer
from helpers import frame_request, jpeg, render, stub_for

from actionstream.contract import INPUT_FRAMES, ModelConfig, read_props, write_props
from actionstream.service.clients.scrape import scrape
from actionstream.service.config import ServeConfig
from actionstream.service.inference.model import OnnxStepModel
from actionstream.training.checkpoint import Checkpoint, CheckpointError
from actionstream.training.config import ExportConfig
from actionstream.training.export import ExportError, export_onnx, parity_error
from actionstream.training.model import ActionRecognizer, build_recognizer
from actionstream.training.synth import LABELS


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Checkpoint, Path]:
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=len(LABELS), height=48, width=64, hidden=32, embed=32)
    net = ActionRecognizer(cfg)
    # Non-trivial BatchNorm statistics, so folding them into the graph is exercised.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    ckpt = Checkpoint(cfg, LABELS, 12.5, "idle", "test-1", net.state_dict(), {"seed": 0}, {"x": 1})
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    return ckpt, export_onnx(ckpt, out)


def test_stepping_onnx_matches_torch_over_the_sequence(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    err = parity_error(ckpt.build_model(), path, ExportConfig(parity_frames=30, parity_batch=3))
    assert err <= 1e-4


def test_parity_check_can_fail(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    other = ckpt.build_model()
    with torch.no_grad():
        other.head.bias.add_(0.01)
    assert parity_error(other, path) > 1e-3


def test_parity_check_loads_the_model_as_the_service_does(
    exported: tuple[Checkpoint, Path], tmp_path: Path
) -> None:
    # A graph that computes the same logits but whose metadata the server would refuse
    # (a state shape the graph does not have) fails the check, not the server later.
    ckpt, path = exported
    model = onnx.load(str(path))
    spec = read_props({p.key: p.value for p in model.metadata_props}, str(path))
    first, *rest = spec.states
    wrong = dataclasses.replace(first, shape=(*first.shape[:-1], first.shape[-1] + 1))
    onnx.helper.set_model_props(
        model, write_props(dataclasses.replace(spec, states=(wrong, *rest)))
    )
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(ExportError, match="the service would not load the exported model"):
        parity_error(ckpt.build_model(), broken)


def test_batch_is_dynamic_and_streams_do_not_mix(exported: tuple[Checkpoint, Path]) -> None:
    _, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # The inputs' names and shapes as the file describes them, as the service reads them.
    spec = read_props(sess.get_modelmeta().custom_metadata_map, str(path))
    assert spec.states  # a recurrent model: the state is what must not mix
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, spec.height, spec.width, 3), dtype=np.uint8)
    state = {s.input: np.zeros((5, *s.shape), np.float32) for s in spec.states}
    batched = sess.run(None, {INPUT_FRAMES: frames, **state})
    for i in range(5):
        one = {INPUT_FRAMES: frames[i : i + 1]} | {k: v[i : i + 1] for k, v in state.items()}
        single = sess.run(None, one)
        for b, s in zip(batched, single, strict=True):
            np.testing.assert_allclose(b[i : i + 1], s, atol=1e-5)


def test_model_describes_itself(exported: tuple[Checkpoint, Path]) -> None:
    ckpt, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = read_props(sess.get_modelmeta().custom_metadata_map, str(path))
    assert spec.labels == LABELS
    assert (spec.height, spec.width) == (48, 64)
    assert spec.fps == 12.5
    assert spec.background_label == "idle"
    assert spec.version == "test-1"
    assert spec.train_config == {"seed": 0} and spec.eval == {"x": 1}
    assert [s.input for s in spec.states] == ["h", "prev_frame"]
    inputs = {i.name: i for i in sess.get_inputs()}
    assert inputs[INPUT_FRAMES].type == "tensor(uint8)"
    for s in spec.states:
        assert tuple(inputs[s.input].shape[1:]) == s.shape
        assert s.output in {o.name for o in sess.get_outputs()}
    # The architecture travels too: the network rebuilt from the file alone takes
    # every trained weight, and its state has the shapes the file declares.
    assert spec.model == ckpt.model_config
    rebuilt = ActionRecognizer(spec.model)
    rebuilt.load_state_dict(ckpt.state_dict)
    h, prev = rebuilt.initial_state(1)
    assert [s.shape for s in spec.states] == [tuple(h.shape[1:]), tuple(prev.shape[1:])]
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["labels"] == list(LABELS) and sidecar["eval"] == {"x": 1}


def test_checkpoint_round_trip(tmp_path: Path, exported: tuple[Checkpoint, Path]) -> None:
    ckpt, _ = exported
    ckpt.save(tmp_path / "c.pt")
    loaded = Checkpoint.load(tmp_path / "c.pt")
    assert loaded.model_config == ckpt.model_config and loaded.labels == ckpt.labels
    assert json.loads((tmp_path / "c.json").read_text())["version"] == "test-1"


def test_a_failed_parity_check_leaves_no_file(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    ckpt, _ = exported
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="parity failed"):
        # ONNX Runtime and PyTorch sum in different orders: never this close.
        export_onnx(ckpt, out, ExportConfig(tolerance=1e-12))
    assert list(tmp_path.iterdir()) == []


def test_an_opset_the_exporter_cannot_write_is_refused(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    # The exporter converts to an opset it cannot write only in its log, and used to hand
    # back opset 18 while the card said 99.
    ckpt, _ = exported
    with pytest.raises(ExportError, match="cannot write opset 99 for this model"):
        export_onnx(ckpt, tmp_path / "m.onnx", ExportConfig(opset=99))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="tolerance must be a positive number"):
        ExportConfig(tolerance=-1.0)


def test_an_out_that_cannot_be_written_is_one_line(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    ckpt, _ = exported
    ckpt.save(tmp_path / "checkpoint.pt")
    (tmp_path / "afile").write_text("")
    result = _export_cli(str(tmp_path), "--out", str(tmp_path / "afile" / "m.onnx"))
    assert result.returncode == 1
    assert result.stderr == (
        f"actionstream export: cannot write {tmp_path / 'afile' / 'm.onnx'}: "
        f"{tmp_path / 'afile'}: File exists\n"
    )


def test_a_card_that_cannot_be_written_leaves_the_earlier_model(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    # Its card's name taken by a folder: the model it would replace stays as it was.
    ckpt, _ = exported
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the earlier model")
    (tmp_path / "m.json").mkdir()
    with pytest.raises(IsADirectoryError):
        export_onnx(ckpt, out)
    assert out.read_bytes() == b"the earlier model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.onnx"]


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 2), ("rnn", 1), ("frame-only", 1)])
def test_every_cell_exports_and_the_service_runs_it(tmp_path: Path, cell: str, layers: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, height=32, width=32, channels=(8, 16), hidden=16, embed=16)
    cfg = dataclasses.replace(cfg, cell=cell, layers=layers)
    net = build_recognizer(cfg)
    ckpt = Checkpoint(cfg, ("a", "b", "c", "d"), 10.0, None, f"test-{cell}", net.state_dict())
    path = export_onnx(ckpt, tmp_path / "model.onnx")
    assert parity_error(ckpt.build_model(), path, ExportConfig(parity_frames=12)) <= 1e-4

    model = OnnxStepModel.load(path)  # the service, unchanged, whatever the state
    expected = {"lstm": ["h", "c", "prev_frame"], "rnn": ["h", "prev_frame"], "frame-only": []}
    assert [s.input for s in model.metadata.states] == expected[cell]
    if cell == "lstm":
        assert model.metadata.states[0].shape == (2, 16)  # (layers, hidden)
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    logits, state = model.step(frames, model.zero_state(3))
    alone, _ = model.step(frames[2:], model.zero_state(1))
    np.testing.assert_allclose(alone[0], logits[2], atol=1e-5)
    assert set(state) == set(expected[cell])

    # Served, a stream of it takes one place for all its frames, stateless or not.
    serve = ServeConfig(
        host="127.0.0.1", port=0, metrics_port=0, grace_seconds=0, max_streams=1, queue_frames=9
    )
    with BackgroundServer(serve, model=model) as server:
        requests = [frame_request(jpeg(image)) for image in render(6, seed=1)]
        answers = list(stub_for(server.port).StreamFrames(iter(requests), timeout=30))
        assert [a.sequence for a in answers] == list(range(1, 7))
        assert server.metrics_port is not None
        assert scrape(server.metrics_port)["actionstream_active_streams"] == 0


def test_an_export_over_its_own_run_is_refused(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    # `export RUN --out RUN/checkpoint.pt` replaced the checkpoint it read (and its card
    # checkpoint.json) with the ONNX model and its card: the trained run was gone.
    ckpt, onnx_model = exported
    run = tmp_path / "run"
    ckpt.save(run / "checkpoint.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = run / ".." / "run" / "checkpoint.onnx"  # its card is the run's, spelt otherwise
    cases = {
        run / "checkpoint.pt": f"--out {run / 'checkpoint.pt'} would replace "
        f"{run / 'checkpoint.pt'}",
        other: f"--out {other}: its card {other.with_suffix('.json')} would replace "
        f"{run / 'checkpoint.json'}",
    }
    for out, said in cases.items():
        result = _export_cli(str(run), "--out", str(out))
        assert result.returncode == 1
        assert result.stderr == (
            f"actionstream export: {said}, of the run it exports from; give the model "
            f"another name (e.g. {run / 'model.onnx'})\n"
        )
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # Nor any file of the run folder (a card named train_config.json ended its resume);
    # a checkpoint without a card of its own leaves the name free.
    from actionstream.training.export import ExportError, refuse_overwriting

    (run / "train_config.json").write_text("{}")
    with pytest.raises(ExportError, match=r"its card .*train_config.json would replace"):
        refuse_overwriting(run, run / "train_config.onnx")
    loose = tmp_path / "loose"
    ckpt.save(loose / "best.pt")
    (loose / "best.json").unlink(missing_ok=True)
    refuse_overwriting(loose / "best.pt", loose / "best.onnx")
    # A checkpoint that was overwritten so is one line to load, not torch's paragraph.
    (run / "checkpoint.pt").write_bytes(onnx_model.read_bytes())
    with pytest.raises(CheckpointError) as e:
        Checkpoint.load(run)
    assert str(e.value).startswith(f"{run / 'checkpoint.pt'}: not an actionstream checkpoint")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value), e.value


def test_an_out_ending_in_json_is_refused_before_it_replaces_that_file(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    # The card is `out` with .json: `--out X.json` was its own card, so the card replaced
    # an existing X.json, no model was written, and the error named a missing .partial.
    ckpt, _ = exported
    ckpt.save(tmp_path / "run" / "checkpoint.pt")
    mine = tmp_path / "X.json"
    mine.write_text('{"mine": 1}')
    result = _export_cli(str(tmp_path / "run"), "--out", str(mine))
    assert result.returncode == 2
    assert result.stderr == (
        f"actionstream export: out must not end in .json, got {str(mine)!r}: the model's "
        f"card goes beside it as .json; name the model e.g. {tmp_path / 'X.onnx'}\n"
    )
    assert mine.read_text() == '{"mine": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.json", "run"]


def test_signals_wait_for_the_model_and_its_card_to_be_swapped_in() -> None:
    # A thread's signal mask held them on the main thread alone: the kernel gave a
    # SIGINT to one of torch's threads, and the main thread was interrupted between the
    # model's rename and its card's. Here the signal comes from another thread.
    import signal
    import threading

    from actionstream.training.export import _signals_held

    done = []
    with pytest.raises(KeyboardInterrupt), _signals_held():
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT))
        sender.start()
        sender.join()
        time.sleep(0.05)  # where an unheld signal would have raised
        done.append("both files swapped")
    assert done == ["both files swapped"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_at_any_point_of_an_export_is_one_line_and_leaves_no_half_file(
    tmp_path: Path, exported: tuple[Checkpoint, Path]
) -> None:
    # Ctrl-C in torch.export's phase gave three chained tracebacks and exit 1 (the
    # interrupted import failed on: "module 'torch._dynamo' has no attribute 'exc'").
    # Sent at points spread over an export's own time, each is one line and exit 130,
    # or the export finished first; never a half-written model or card.
    import signal
    import time

    from helpers import WITH_CTRL_C

    ckpt, _ = exported
    ckpt.save(tmp_path / "run" / "checkpoint.pt")

    def export(name: str, after: float | None) -> tuple[int, str]:
        out = tmp_path / name / "m.onnx"
        run = subprocess.Popen(
            [sys.executable, "-c", WITH_CTRL_C, "export", str(tmp_path / "run"), "--out", str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        if after is not None:
            time.sleep(after)
            run.send_signal(signal.SIGINT)
        said, err = run.communicate(timeout=300)
        left = sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []
        assert left in ([], ["m.json", "m.onnx"]), left
        if run.returncode == 130:
            assert err.splitlines() == [f"actionstream export: interrupted; {out} was not written"]
            assert left == []
        else:
            # Finished first; a signal while the interpreter shuts down (its handlers back
            # to the default) ends it there, once the model is written and said so.
            assert run.returncode in (0, -signal.SIGINT), err
            assert said.startswith(f"wrote {out}") and OnnxStepModel.load(out) is not None
        return run.returncode, err

    start = time.monotonic()
    export("whole", None)
    whole = time.monotonic() - start
    # Late points too: torch.export's phase is near the end (the parity check after it).
    codes = [export(f"at{k}", whole * k / 10)[0] for k in (4, 8)]
    assert 130 in codes, codes


def _export_cli(*args: str) -> subprocess.CompletedProcess[str]:
    from helpers import actionstream

    return actionstream("export", *args, timeout=300)
