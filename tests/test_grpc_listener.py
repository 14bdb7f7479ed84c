"""`actionstream serve` reads its connections with gRPC's iomgr listener, chosen before
gRPC loads, unless the operator's GRPC_EXPERIMENTS says otherwise."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from actionstream.serve_process import ServeProcess
from actionstream.service.endpoint import grpc_listener


def test_serve_turns_the_event_engine_listener_off_beside_other_experiments() -> None:
    environ: dict[str, str] = {}
    grpc_listener.prefer_iomgr(environ)
    assert environ == {"GRPC_EXPERIMENTS": "-event_engine_listener"}
    assert grpc_listener.listener(environ) == "iomgr"

    environ = {"GRPC_EXPERIMENTS": " tcp_rcv_lowat, "}
    grpc_listener.prefer_iomgr(environ)
    assert environ == {"GRPC_EXPERIMENTS": "tcp_rcv_lowat,-event_engine_listener"}

    # gRPC takes one "-" off: this names an experiment it does not know, not ours.
    environ = {"GRPC_EXPERIMENTS": "--event_engine_listener"}
    grpc_listener.prefer_iomgr(environ)
    assert grpc_listener.listener(environ) == "iomgr"


@pytest.mark.parametrize(
    ("operator", "listener"),
    [
        ("event_engine_listener", "EventEngine"),
        ("-event_engine_listener", "iomgr"),
        ("tcp_rcv_lowat,event_engine_listener", "EventEngine"),
        ("event_engine_listener,-event_engine_listener", "iomgr"),  # gRPC: the last one wins
    ],
)
def test_an_operators_own_choice_stands(operator: str, listener: str) -> None:
    environ = {"GRPC_EXPERIMENTS": operator}
    grpc_listener.prefer_iomgr(environ)
    assert environ == {"GRPC_EXPERIMENTS": operator}
    assert grpc_listener.listener(environ) == listener
    assert grpc_listener.listener({}) == "EventEngine"  # gRPC's default


def test_the_command_line_loads_no_grpc_before_serve_chooses() -> None:
    # gRPC reads GRPC_EXPERIMENTS once, as it loads: a module of the command line that
    # imported grpc would leave `serve` no choice.
    code = "import sys, actionstream.cli; print(sorted(m for m in sys.modules if 'grpc' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _serve_and_connect(log_path: Path, experiments: str, *args: str) -> str:
    """Starts a real `actionstream serve ARGS` whose environment has GRPC_EXPERIMENTS set
    to `experiments` and gRPC's own tracing of its TCP layer on, connects once, and
    returns its log."""
    env = {"GRPC_EXPERIMENTS": experiments, "GRPC_VERBOSITY": "debug", "GRPC_TRACE": "tcp"}
    with log_path.open("w+") as log, ServeProcess(log, args=list(args), env=env) as server:
        # The server relays native log lines at 10 a second; let its start-up lines pass.
        time.sleep(1.2)
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.3)
    return log_path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_reads_connections_with_the_iomgr_listener(tmp_path: Path, workers: int) -> None:
    # An empty GRPC_EXPERIMENTS, as on a fresh machine (this test process sets its own).
    log = _serve_and_connect(tmp_path / "serve.log", "", "--workers", str(workers))
    assert "Unknown experiment" not in log, "this grpcio no longer has the experiment"
    assert log.count("gRPC listener iomgr") == workers, log
    # gRPC's own trace: iomgr's listener is tcp_server_posix.cc and its connections
    # tcp_posix.cc; the EventEngine's connections log from endpoint.cc.
    assert "tcp_server_posix.cc" in log and "SERVER_CONNECT" in log, log
    assert "endpoint.cc:" not in log, log


@pytest.mark.slow
def test_an_operator_can_keep_grpcs_event_engine_listener(tmp_path: Path) -> None:
    log = _serve_and_connect(tmp_path / "serve.log", "event_engine_listener")
    assert "gRPC listener EventEngine" in log
    assert "endpoint.cc:" in log, log
    assert "tcp_server_posix.cc" not in log and "tcp_posix.cc" not in log, log
