"""The console script as users run it: subcommands, help, and the service-only install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actionstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


COMMANDS = ("synth", "train", "evaluate", "export", "serve", "stream", "watch", "health", "demo")


def test_every_subcommand_has_help() -> None:
    listing = _run("--help").stdout
    for command in COMMANDS:
        assert command in listing
        result = _run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(f"Usage: actionstream {command} ")


def test_help_groups_the_settings() -> None:
    out = _run("serve", "--help").stdout
    sections = [line.rstrip(":") for line in out.splitlines() if line and line[0] != " "]
    assert sections[-6:] == ["Model", "Network", "Limits", "Real time", "Operation", "Other"]
    assert "--allow-sources / --no-allow-sources" in out
    train = _run("train", "--help").stdout
    assert all(f"\n{s}:\n" in train for s in ("Run", "Data", "Model", "Optimisation"))


def test_serve_flags_name_their_environment_variables() -> None:
    out = _run("serve", "--help").stdout
    for name in ("ACTIONSTREAM_MODEL", "ACTIONSTREAM_PORT", "ACTIONSTREAM_METRICS_PORT"):
        assert name in out


def test_a_settings_bounds_are_declared_with_it_and_held() -> None:
    import dataclasses

    from actionstream.settings import refuse_out_of_range, setting

    @dataclasses.dataclass(frozen=True)
    class Limits:
        count: int = setting(1, help="-", at_least=1, at_most=8)
        seed: int = setting(0, help="-", at_least=0)
        cap: int | None = setting(None, help="-", at_least=1)  # unset: no bound to hold

    refuse_out_of_range(Limits())
    for given, message in (
        ({"count": 0}, "count must be at least 1, got 0"),
        ({"count": 9}, "count must be at most 8, got 9"),
        ({"seed": -1}, "seed must not be negative, got -1"),
        ({"cap": 0}, "cap must be at least 1, got 0"),
    ):
        with pytest.raises(ValueError, match=message):
            refuse_out_of_range(Limits(**given))


def test_bad_setting_is_one_line_not_a_traceback() -> None:
    for argv, env, message in (
        (["serve", "--port", "70000"], {}, "actionstream serve: port must be 0..65535"),
        (["serve"], {"ACTIONSTREAM_PORT": "http"}, "(from ACTIONSTREAM_PORT): 'http' is not a"),
        # Given on the command line, not in the environment: the variable is not named.
        (["serve", "--port", "http"], {}, "Invalid value for '--port': 'http' is not a valid"),
        (["serve"], {"ACTIONSTREAM_ALLOW_SOURCES": "maybe"}, "'maybe' is not a valid boolean"),
        (["serve", "--bogus"], {}, "No such option '--bogus'"),
        (["serve"], {"ACTIONSTREAM_WORKERS": "0"}, "workers must be at least 1, got 0"),
        (["serve", "--jpeg-floor", "0"], {}, "jpeg_floor must be above 0 and at most 1"),
        (["serve"], {"ACTIONSTREAM_INFERENCE_NICE": "-5"}, "inference_nice must be 0..19"),
        (["train", "--channels", "16,x"], {}, "not a comma-separated list of whole numbers"),
        (["train", "--channels", "8,,16"], {}, "'8,,16' has an empty item"),
        (["stream"], {}, "actionstream stream: Missing option '--source'"),
        (["stream", "--source", "0", "--target", "127.0.0.1"], {}, "target must be HOST:PORT"),
        (["stream", "--source", "0", "--target", "::1:50051"], {}, "IPv6 target needs brackets"),
        (["stream", "--source", "0", "--reconnect-seconds", "-1"], {}, "reconnect_seconds must"),
        # NaN passes every < check: it turned the idle timeout off.
        (["serve"], {"ACTIONSTREAM_IDLE_TIMEOUT_SECONDS": "nan"}, "must be a finite number"),
        (["serve", "--grace-seconds", "inf"], {}, "grace_seconds must be a finite number"),
        (["serve", "--max-batch-wait-ms", "5000"], {}, "max_batch_wait_ms must be 0..1000"),
        # gRPC takes it in ms as a C int: past it, a traceback; under 0.5 s, 0 ms (hangs).
        (["serve", "--max-connection-age-seconds", "3000000"], {}, "0 (never) or from 1 to"),
        (["serve", "--max-connection-age-seconds", "0.0001"], {}, "0 (never) or from 1 to"),
        (["train", "--lr", "nan"], {}, "actionstream train: lr must be a finite number"),
        # gRPC's message limit overflowed a C int: a 60-line traceback.
        (["serve", "--max-frame-bytes", "3000000000"], {}, "max_frame_bytes must be at most"),
        # A server that made threads until the machine stalled; one that would warm every
        # batch size up to 100,000 before serving.
        (["serve", "--threads", "100000"], {}, "threads must be at most 64, got 100000"),
        (["serve"], {"ACTIONSTREAM_DECODE_THREADS": "65"}, "decode_threads must be at most 64"),
        (["serve", "--max-batch", "100000"], {}, "max_batch must be at most 256"),
        (["serve", "--max-frame-pixels", str(2**31)], {}, "max_frame_pixels must be at most"),
        (["watch", "--source", "0", "--reconnect-seconds", "-inf"], {}, "a finite number"),
        (["watch", "--source", " "], {}, "actionstream watch: source is empty"),
        (["watch", "--source", "0", "--max-predictions", "-1"], {}, "max_predictions must be"),
        (["watch", "--source", "0", "--target", "host"], {}, "target must be HOST:PORT"),
        (["watch", "--source", "0", "--top-k", "99999999999"], {}, "top_k must be 0 (the"),
        (["stream", "--source", "0", "--top-k", "1001"], {}, "top_k must be 0 (the server's"),
        (["fly"], {}, "No such command 'fly'"),
    ):
        result = _run(*argv, env=env)
        assert result.returncode == 2, (argv, result.stderr)
        assert message in result.stderr, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_misspelt_serve_variable_is_warned_of_and_the_changed_settings_told() -> None:
    # ACTIONSTREAM_GRACE ran the server with the default grace, without a word.
    from actionstream.service.config import ServeConfig
    from actionstream.service.endpoint.settings_check import (
        changed_settings,
        warn_unknown_variables,
    )

    environ = {"ACTIONSTREAM_GRACE": "20", "ACTIONSTREAM_PORT": "1", "ACTIONSTREAM_IMAGE": "x"}
    # Nothing like a setting: no guess (the shared prefix made ACTIONSTREAM_HOST one).
    environ |= {"ACTIONSTREAM_BOGUS": "1", "ACTIONSTREAM_MAXSTREAMS": "8", "ACTIONSTREAM_MAX": "8"}
    # A Kubernetes service link (for a pod that leaves them on) is not the user's typo.
    environ |= {"ACTIONSTREAM_SERVICE_HOST": "203.0.113.7", "ACTIONSTREAM_PORT_50051_TCP": "tcp://"}
    assert warn_unknown_variables(environ) == [
        "ACTIONSTREAM_BOGUS is not a setting of serve; it is ignored",
        "ACTIONSTREAM_GRACE is not a setting of serve (did you mean "
        "ACTIONSTREAM_GRACE_SECONDS?); it is ignored",
        "ACTIONSTREAM_MAX is not a setting of serve; it is ignored",
        "ACTIONSTREAM_MAXSTREAMS is not a setting of serve (did you mean "
        "ACTIONSTREAM_MAX_STREAMS?); it is ignored",
    ]
    assert changed_settings(ServeConfig()) == ""
    assert changed_settings(ServeConfig(max_streams=8, workers=2)) == "max_streams=8, workers=2"


def test_log_format_takes_any_case_as_log_level_does() -> None:
    from actionstream.service.config import ServeConfig

    assert ServeConfig(log_format="JSON", log_level="debug").log_format == "json"
    # On the command line its words are offered, and refused by click before anything starts.
    assert "--log-format [text|json]" in _run("serve", "--help").stdout
    refused = _run("serve", "--host", "127.0.0.1", "--log-format", "xml")
    assert refused.returncode == 2
    assert "Invalid value for '--log-format'" in refused.stderr
    assert "'xml' is not one of 'text', 'json'" in refused.stderr


def test_the_grpc_listener_is_one_of_grpcs_two() -> None:
    from actionstream.service.config import ServeConfig

    assert ServeConfig(grpc_listener="IOMGR").grpc_listener == "iomgr"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grpc_listener must be eventengine or iomgr"):
        ServeConfig(grpc_listener="epoll")  # type: ignore[arg-type]
    env = {"ACTIONSTREAM_GRPC_LISTENER": "epoll"}
    refused = _run("serve", "--host", "127.0.0.1", env=env)
    assert refused.returncode == 2
    assert "'epoll' is not one of 'eventengine', 'iomgr'" in refused.stderr


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, False),
        (["--allow-sources"], {}, True),
        ([], {"ACTIONSTREAM_ALLOW_SOURCES": "true"}, True),
        (["--no-allow-sources"], {"ACTIONSTREAM_ALLOW_SOURCES": "1"}, False),
    ],
)
def test_boolean_flags_and_their_environment_variables(
    argv: list[str], env: dict[str, str], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from actionstream.cli import build_cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = build_cli().commands["serve"].make_context("serve", argv)
    assert ctx.params["allow_sources"] is expected


def test_training_commands_refuse_garbage_with_a_message(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    card = tmp_path / "checkpoint.json"
    card.write_text('{"version": "x"}')
    for argv, message in (
        (
            ["export", str(junk), "--out", str(tmp_path / "m.onnx")],
            "not an actionstream checkpoint",
        ),
        (["evaluate", str(tmp_path / "missing")], "no such checkpoint"),
        # The card beside a checkpoint is named for the model: a pickle error, before.
        (
            ["export", str(card), "--out", str(tmp_path / "m.onnx")],
            f"{card} is a checkpoint's card (JSON), not the checkpoint; name the run folder",
        ),
        (["train", "--bptt", "0", "--out", str(tmp_path / "run")], "bptt must be at least 1"),
        (["train", "--size", "0", "--out", str(tmp_path / "run")], "size must be at least 1"),
        (
            ["train", "--threads", "-3", "--out", str(tmp_path / "run")],
            "threads must not be negative, got -3",
        ),
        (["train", "--device", "tpu", "--out", str(tmp_path / "run")], "device must be auto, cpu"),
        (["synth", "--out", str(tmp_path / "f.avi"), "--seconds", "-1"], "must be positive"),
        (["evaluate", str(tmp_path / "missing"), "--streams", "0"], "streams must be at least 1"),
    ):
        result = _run(*argv)
        assert result.returncode != 0, argv
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "run").exists()


# A run of seconds, where a refusal that should have come does not.
_TINY_TRAIN = (
    *("--epochs", "1", "--train-streams", "8", "--batch-size", "8", "--stream-frames", "16"),
    *("--bptt", "16", "--val-streams", "2", "--val-frames", "20", "--size", "16"),
    *("--channels", "4,8", "--embed", "8", "--hidden", "8", "--threads", "1", "--init", "scratch"),
)


def test_an_empty_path_is_refused_not_taken_as_here_or_unset(tmp_path: Path) -> None:
    # `train --data ""` trained on the synthetic world without a word, `--out ""` wrote
    # the run into the current folder, `--cache ""` scattered its files there, and
    # `export RUN --out ""` ended in a traceback (PosixPath('.') has an empty name).
    pytest.importorskip("torch")
    for argv, name in (
        (["train", *_TINY_TRAIN, "--data", ""], "data"),
        (["train", *_TINY_TRAIN, "--out", ""], "out"),
        (["train", *_TINY_TRAIN, "--cache", ""], "cache"),
        (["train", *_TINY_TRAIN, "--split", ""], "split"),
        (["train", *_TINY_TRAIN, "--init", ""], "init"),
        (["evaluate", ""], "run"),
        (["evaluate", "run", "--data", ""], "data"),
        (["evaluate", "run", "--out", ""], "out"),
        (["export", "run", "--out", ""], "out"),
    ):
        result = _run(*argv, cwd=tmp_path)
        assert result.returncode == 2, (argv, result.stdout, result.stderr)
        assert f"{name} must name a file or folder, got an empty value" in result.stderr, argv
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_negative_seed_is_refused_in_one_line(tmp_path: Path) -> None:
    # numpy's generators take no negative seed: a traceback, in train after the data
    # was read.
    for argv in (
        ["train", "--data", "videos", "--seed", "-1"],
        ["evaluate", "run", "--seed", "-1"],
    ):
        result = _run(*argv, cwd=tmp_path)
        assert result.returncode == 2, (argv, result.stderr)
        assert "seed must not be negative, got -1" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_huge_size_is_refused_in_one_line(tmp_path: Path) -> None:
    # --size 100000 passed every check (a multiple of 16) and ended in OpenCV's
    # out-of-memory traceback once frames were resized to it. (--data names no folder:
    # without the check the run is refused for that instead, never resizing a frame.)
    result = _run("train", "--data", "videos", "--size", "100000", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "size must be at most 1024 pixels, got 100000" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_training_on_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = _run("train", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "--device cuda: this torch build sees no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_training_commands_explain_how_to_get_torch() -> None:
    # The service image has no torch: simulate it by making `import torch` fail.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from actionstream.cli import main\n"
        "sys.exit(main(['export', 'runs/x', '--out', 'x.onnx']))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode != 0
    assert "pip install 'actionstream[train]'" in result.stderr


def test_synth_writes_a_labelled_video(tmp_path: Path) -> None:
    result = _run("synth", "--out", str(tmp_path / "f.avi"), "--seconds", "2", "--size", "80")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "f.avi").stat().st_size > 0
    assert len((tmp_path / "f.csv").read_text().splitlines()) == 21


def test_synth_and_demo_say_in_one_line_where_they_cannot_write(tmp_path: Path) -> None:
    # A file where their folder must go (root may write anywhere else).
    afile = tmp_path / "afile"
    afile.write_text("in the way")
    synth = _run("synth", "--out", str(afile / "f.avi"), "--seconds", "1")
    assert synth.returncode == 1
    assert f"synth: cannot write {afile / 'f.avi'}: {afile} is a file" in synth.stderr
    deeper = _run("synth", "--out", str(afile / "sub" / "f.avi"), "--seconds", "1")
    assert f"synth: cannot write {afile / 'sub' / 'f.avi'}: Not a directory" in deeper.stderr
    demo = _run("demo", "--out", str(afile), "--seconds", "1")
    assert demo.returncode == 1
    assert f"actionstream demo: cannot write {afile} (--out): {afile} is a file" in demo.stderr
    for result in (synth, deeper, demo):
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_demo_whose_server_cannot_start_says_why(tmp_path: Path) -> None:
    # It said "the server exited with 1; its log: build/demo/server.log", the reason in
    # the log alone.
    out = tmp_path / "demo"
    demo = _run("demo", "--model", "/nonexistent.onnx", "--out", str(out), "--seconds", "1")
    assert demo.returncode == 1
    assert demo.stderr == (
        "actionstream demo: the server exited with 1: actionstream serve: /nonexistent.onnx: "
        f"no such model file; its log: {out / 'server.log'}\n"
    )


def test_the_version_is_told() -> None:
    from importlib.metadata import version

    result = _run("--version")
    assert (result.returncode, result.stdout) == (
        0,
        f"actionstream, version {version('actionstream')}\n",
    )


def test_shipping_an_encoder_says_its_usage_and_errors_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from actionstream.training.pretrained import main

    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main([str(tmp_path / "no-run")]) == 1


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    argv = ["demo", "--seconds", "10", "--no-realtime", "--out", str(tmp_path)]
    result = _run(*argv, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "100 sent, 100 answered" in out
    assert "frames processed 100" in out  # read back from the server's /metrics
    assert "server stopped cleanly" in out
    # The bundled model on a feed it never saw; chance is 1 in 9 (11%).
    accuracy = float(out.split("accuracy")[1].split("%")[0].strip())
    assert accuracy > 50


def test_an_unusable_out_or_cache_path_is_one_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # A file where a folder must go: the OS's error, as one line naming the path,
    # and --out checked before any video is decoded. The command line run in this
    # process (the subprocess cases above pay for importing torch each time).
    pytest.importorskip("torch")
    from videogen import class_folders

    from actionstream.cli import main
    from actionstream.contract import ModelConfig
    from actionstream.training.checkpoint import Checkpoint
    from actionstream.training.model import build_recognizer

    data = class_folders(tmp_path / "data", ("left", "right"), 3)
    afile = tmp_path / "afile"
    afile.write_text("in the way")
    cache = tmp_path / "cache"
    config = ModelConfig(num_classes=2, height=32, width=32, channels=(8, 16), embed=16, hidden=16)
    net = build_recognizer(config)
    Checkpoint(config, ("left", "right"), 10.0, None, "t", net.state_dict()).save(
        tmp_path / "run" / "checkpoint.pt"
    )
    train = ["train", "--data", str(data), "--val-fraction", "0.5"]
    for argv, message in (
        (
            [*train, "--out", str(afile), "--cache", str(cache)],
            f"--out {afile}: cannot make the run folder ({afile} is a file, not a folder)",
        ),
        (
            [*train, "--out", str(afile / "run"), "--cache", str(cache)],
            f"--out {afile / 'run'}: cannot make the run folder ({afile} is a file",
        ),
        (
            [*train, "--out", str(tmp_path / "new"), "--cache", str(afile / "sub")],
            f"{afile / 'sub'}: cannot make the frame cache folder (Not a directory); give "
            "--cache a folder that can be written",
        ),
        (
            ["evaluate", str(tmp_path / "run"), "--data", str(data), "--cache", str(afile)],
            f"{afile}: cannot make the frame cache folder (File exists); give --cache",
        ),
    ):
        code = main(argv)
        err = capfd.readouterr().err
        assert code == 1, (argv, err)
        assert message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not cache.exists()  # the bad --out was refused before the data was read
    assert not (tmp_path / "new").exists()


def test_val_fraction_beside_a_split_file_is_refused(tmp_path: Path) -> None:
    # The split file decides alone; a fraction given with it used to be dropped unsaid.
    sheet = tmp_path / "split.csv"
    sheet.write_text("path,split\n")
    argv = ["train", "--data", str(tmp_path), "--split", str(sheet), "--val-fraction", "0.5"]
    result = _run(*argv, "--out", str(tmp_path / "run"))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [
        "actionstream train: --val-fraction and --split both choose the held-out videos; "
        "give one of them"
    ]
    assert not (tmp_path / "run").exists()


def test_labels_without_one_video_to_label_is_refused(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # --labels labels one --data video; without --data, or with a folder or manifest,
    # evaluate scored on the data's own labels and ignored it, unsaid.
    from actionstream.cli import main

    labels = str(tmp_path / "truth.csv")
    run = str(tmp_path / "run")
    suffixes = ".mp4 .m4v .avi .mkv .webm .mov .mpg .mpeg .wmv .ts"
    for data, said in (
        ([], "no --data was given: the synthetic streams carry their own labels"),
        (
            ["--data", str(tmp_path / "videos")],
            f"{tmp_path / 'videos'} is not one ({suffixes}): class folders and manifests "
            "carry their own labels",
        ),
        (
            ["--data", str(tmp_path / "clips.csv")],
            f"{tmp_path / 'clips.csv'} is not one ({suffixes}): class folders",
        ),
    ):
        code = main(["evaluate", run, *data, "--labels", labels])
        err = capfd.readouterr().err
        assert code == 2, err
        assert err.startswith(
            "actionstream evaluate: labels is the frame,label CSV of a --data video file, "
            f"and {said}"
        ), err
        assert len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []
