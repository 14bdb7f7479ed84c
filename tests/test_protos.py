"""The committed stubs must be exactly what `make protos` writes from protos/."""

from __future__ import annotations

import os
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


CLIENT = """
import grpc
import grpc.aio

from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc


async def first_label(target: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest())
        return info.labels[0]


def label_count(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        return stub.GetModelInfo(pb.GetModelInfoRequest()).labels  # not an int
"""


def test_a_client_is_type_checked_against_the_stubs(tmp_path: Path) -> None:
    # A user's client, checked strictly: the messages' and the service's stubs carry types
    # through a synchronous and an asyncio channel, so a wrong one is found, and nothing
    # else is reported.
    pytest.importorskip("mypy")
    client = tmp_path / "client.py"
    client.write_text(CLIENT)
    checked = subprocess.run(
        [
            *(sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent"),
            *("--config-file", os.devnull, "--cache-dir", str(tmp_path / "cache"), str(client)),
        ],
        cwd=tmp_path,
        env={**os.environ, "MYPYPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    # Only the client's own lines count: an installed package's are never reported, and
    # protoc's .pyi leave Mapping's type arguments out under --strict.
    errors = [line for line in checked.stdout.splitlines() if line.startswith("client.py:")]
    assert len(errors) == 1, checked.stdout
    assert "client.py:19: error: Incompatible return value type" in errors[0]
    assert 'got "RepeatedScalarFieldContainer[str]", expected "int"' in errors[0]
