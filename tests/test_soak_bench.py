"""bench/soak.py against a real server: its samples and its verdict read what happened.

A soak's figures are only worth its counts: the cameras' frames must show up
as answered in its intervals, and after they leave it must see their streams
gone and the server stopped cleanly, or a leak it reports could be its own.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_a_short_soak_counts_every_frame_and_sees_the_streams_go() -> None:
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "bench" / "soak.py"), "--swarm", "python"),
            *("--cameras", "3", "--minutes", "0.1", "--every", "2", "--settle", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    # 3 cameras at 10 fps for 6 s: every frame sent answered, as the cameras counted it...
    sent = re.search(r"^([\d,]+) of ([\d,]+) frames answered", out, re.M)
    assert sent is not None, out
    answered, scheduled = (int(g.replace(",", "")) for g in sent.groups())
    assert scheduled == 180 and answered == scheduled, out
    # ...and as the server's /metrics did, summed over the intervals.
    table = out.split("streams\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert sum(int(row.split()[5]) for row in table) == answered, out
    assert "1 s after the cameras left: 0 streams open" in out, out
    assert "SIGTERM: exit code 0" in out, out
