"""The service on the oldest OpenCV and NumPy its dependencies allow.

pyproject.toml lets pip choose OpenCV 4.9 and NumPy 1.26: an application that pins
NumPy 1 gets an OpenCV 4.x, since OpenCV 5 needs NumPy 2. The rest of the suite runs
on the newest, where `serve` once called an OpenCV 5 API that 4.x lacks and crashed
on start. Here both floors are installed beside the suite's environment (ahead of it
on PYTHONPATH) and the demo runs on them whole: serve, a feed written and decoded,
a stream, a scrape.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _floor(package: str) -> str:
    """The lowest version pyproject.toml's dependencies allow for `package`."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(rf'"{re.escape(package)}>=([0-9.]+)', text)
    assert found, f"no lower bound for {package} in pyproject.toml"
    return found.group(1)


@pytest.mark.slow
def test_the_demo_runs_on_the_oldest_opencv_and_numpy_allowed(tmp_path: Path) -> None:
    floors = {"opencv-python-headless": _floor("opencv-python-headless"), "numpy": _floor("numpy")}
    target = tmp_path / "floor"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--only-binary", ":all:", "--no-deps", "--target", str(target)),
            *(f"{name}=={version}.*" for name, version in floors.items()),
        ],
        check=True,
        timeout=600,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    versions = subprocess.run(
        [sys.executable, "-c", "import cv2, numpy; print(cv2.__version__, numpy.__version__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert versions[0].startswith(floors["opencv-python-headless"] + ".")
    assert versions[1].startswith(floors["numpy"] + ".")
    demo = subprocess.run(
        [
            *(sys.executable, "-m", "actionstream", "demo", "--seconds", "4", "--quiet"),
            *("--no-realtime", "--out", str(tmp_path / "demo")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(r"frames\s+40 sent, 40 answered", demo.stdout), demo.stdout
