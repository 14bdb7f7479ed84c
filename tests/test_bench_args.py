"""The bench scripts refuse bad values in one line, before they render or start anything.

A developer's trial: most bad values ended in tracebacks (`--streams 0` in numpy's,
`--model` missing in onnxruntime's), some only after minutes of runs (a bad `--plot`
path, a bad level late in `--cameras`), and a server that could not start was told as
"the server exited with 1; its log: 3".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "args", "said"),
    [
        ("load.py", ["--cameras", "10,-5"], "--cameras, --fps and --seconds must be above 0"),
        ("load.py", ["--cameras", "abc"], "--cameras takes whole numbers joined by commas"),
        ("load.py", ["--plot", "/nonexistent/x.png"], "--plot: no folder /nonexistent"),
        ("soak.py", ["--minutes", "0"], "--cameras, --fps, --minutes and --every must be above"),
        ("soak.py", ["--settle", "-1"], "--settle must be 0 or more"),
        ("serve_throughput.py", ["--streams", "0"], "--streams and --frames must be at least 1"),
        ("step_latency.py", ["--model", "/nonexistent.onnx"], "--model: no such model file"),
        ("png_decode.py", ["--frames", "0"], "--rounds and --frames must be at least 1"),
        ("train_step.py", ["--steps", "0"], "--batch, --frames, --steps and --rounds must be"),
    ],
)
def test_a_bad_value_is_one_line(script: str, args: list[str], said: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done
    assert done.stderr.splitlines()[-1].startswith(f"{script}: error: {said}"), done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.slow
def test_a_server_that_cannot_start_is_told_in_its_own_words() -> None:
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "load.py"), "--cameras", "1", "--seconds", "1"),
            *("--swarm", "python", "--server-arg=--model", "--server-arg=/nonexistent.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done
    assert done.stderr == (
        "load.py: the server exited with 1: actionstream serve: /nonexistent.onnx: no such "
        "model file\n"
    ), done.stderr
