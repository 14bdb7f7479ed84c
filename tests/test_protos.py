"""The committed stubs must be exactly what `make protos` writes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    subprocess.run(
        [str(ROOT / "scripts" / "gen_protos.sh"), sys.executable, str(tmp_path)], check=True
    )
    fresh = tmp_path / "actionstream" / "v1"
    committed = ROOT / "actionstream" / "v1"
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in committed.iterdir() if p.suffix in (".py", ".pyi"))
    stale = [n for n in names if (fresh / n).read_bytes() != (committed / n).read_bytes()]
    assert not stale, f"stale stubs {stale}: run `make protos` and commit actionstream/v1"
