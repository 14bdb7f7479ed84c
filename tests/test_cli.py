"""The console script as users run it: subcommands, help, and the service-only install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "actionstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_every_subcommand_has_help() -> None:
    for command in ("synth", "train", "evaluate", "export", "serve", "stream", "demo"):
        result = _run(command, "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: actionstream" in result.stdout


def test_serve_flags_name_their_environment_variables() -> None:
    out = _run("serve", "--help").stdout
    for name in ("ACTIONSTREAM_MODEL", "ACTIONSTREAM_PORT", "ACTIONSTREAM_METRICS_PORT"):
        assert name in out


def test_bad_setting_is_a_message_not_a_traceback() -> None:
    result = _run("serve", "--port", "70000")
    assert result.returncode != 0
    assert "port must be" in result.stderr and "Traceback" not in result.stderr
    result = _run("serve", env={"ACTIONSTREAM_PORT": "http"})
    assert result.returncode != 0 and "ACTIONSTREAM_PORT" in result.stderr


def test_training_commands_refuse_garbage_with_a_message(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    for argv, message in (
        (
            ["export", str(junk), "--out", str(tmp_path / "m.onnx")],
            "not an actionstream checkpoint",
        ),
        (["evaluate", str(tmp_path / "missing")], "no such checkpoint"),
        (["train", "--bptt", "0", "--out", str(tmp_path / "run")], "bptt must be at least 1"),
        (["train", "--size", "60", "--out", str(tmp_path / "run")], "must be a multiple of 16"),
        (["synth", "--out", str(tmp_path / "f.avi"), "--seconds", "-1"], "must be positive"),
    ):
        result = _run(*argv)
        assert result.returncode != 0, argv
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "run").exists()


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


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    argv = ["demo", "--seconds", "10", "--realtime", "false", "--out", str(tmp_path)]
    result = _run(*argv, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "100 sent, 100 answered" in out
    assert "frames processed 100" in out  # read back from the server's /metrics
    assert "server stopped cleanly" in out
    # The bundled model on a feed it never saw; chance is 1 in 9 (11%).
    accuracy = float(out.split("accuracy")[1].split("%")[0].strip())
    assert accuracy > 50
