"""`actionstream serve` as a real process: ports on stdout, grpcurl works, SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STARTUP = re.compile(
    r"^actionstream serving (?P<version>\S+) on 127\.0\.0\.1:(?P<port>\d+), "
    r"(?:metrics on http://127\.0\.0\.1:(?P<metrics>\d+)/metrics|metrics off)$"
)


def _start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], re.Match[str]]:
    proc = subprocess.Popen(
        [str(BIN / "actionstream"), "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30):
            proc.kill()
            pytest.fail("no startup line within 30 s")
    line = proc.stdout.readline().strip()
    match = STARTUP.match(line)
    if match is None:
        proc.kill()
        pytest.fail(f"unexpected startup line {line!r}; stderr: {proc.communicate()[1]}")
    return proc, match


@pytest.fixture
def stop_after() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _grpcurl(*args: str) -> str:
    done = subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _terminate(proc: subprocess.Popen[str], sig: signal.Signals) -> int:
    start = time.monotonic()
    proc.send_signal(sig)
    code = proc.wait(timeout=10)
    assert time.monotonic() - start < 5
    return code


def test_serve_process_with_grpcurl(stop_after: list[subprocess.Popen[str]]) -> None:
    proc, started = _start(["--host", "127.0.0.1", "--port", "0", "--metrics-port", "0"], {})
    stop_after.append(proc)
    address = f"127.0.0.1:{started['port']}"

    services = _grpcurl(address, "list").split()
    assert "actionstream.v1.ActionRecognition" in services
    assert "grpc.health.v1.Health" in services
    assert json.loads(_grpcurl(address, "grpc.health.v1.Health/Check")) == {"status": "SERVING"}
    info = json.loads(_grpcurl(address, "actionstream.v1.ActionRecognition/GetModelInfo"))
    assert info["version"] == started["version"]

    url = f"http://127.0.0.1:{started['metrics']}/metrics"
    assert (
        "actionstream_active_streams 0.0" in urllib.request.urlopen(url, timeout=5).read().decode()
    )

    assert _terminate(proc, signal.SIGTERM) == 0


def test_serve_reads_its_settings_from_the_environment(
    stop_after: list[subprocess.Popen[str]],
) -> None:
    env = {
        "ACTIONSTREAM_HOST": "127.0.0.1",
        "ACTIONSTREAM_PORT": "0",
        "ACTIONSTREAM_METRICS_PORT": "-1",
    }
    proc, started = _start([], env)
    stop_after.append(proc)
    assert started["metrics"] is None  # "metrics off"
    assert int(started["port"]) != 50051
    with grpc.insecure_channel(f"127.0.0.1:{started['port']}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert _terminate(proc, signal.SIGINT) == 0


def test_serve_refuses_a_bad_model_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00" * 64)
    done = subprocess.run(
        [
            str(BIN / "actionstream"),
            "serve",
            "--model",
            str(bad),
            "--port",
            "0",
            "--metrics-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"actionstream serve: {bad}: not a loadable ONNX model" in done.stderr
    assert "Traceback" not in done.stderr
