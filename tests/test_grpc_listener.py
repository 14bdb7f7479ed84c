"""`actionstream serve` reads its connections with gRPC's EventEngine listener unless the
operator's GRPC_EXPERIMENTS chooses iomgr's, and a client flooding HTTP/2 frames
holds up neither the other streams nor the server's stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import LiveStream, frame_request, jpeg, render, stub_for

from actionstream.serve_process import ServeProcess
from actionstream.service.config import Listener
from actionstream.service.endpoint import grpc_listener
from actionstream.v1 import actionstream_pb2 as pb

FLOOD = Path(__file__).with_name("h2_flood.py")


@pytest.fixture(autouse=True)
def _a_fresh_machines_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers these tests start choose their listener as on a fresh machine, whatever
    the shell that runs the tests has set (gRPC in this process has read it already)."""
    monkeypatch.delenv("ACTIONSTREAM_GRPC_LISTENER", raising=False)
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)


@pytest.mark.parametrize(
    ("experiments", "chosen", "asked"),
    [
        ("", "eventengine", "event_engine_listener"),
        ("", "iomgr", "-event_engine_listener"),
        (" tcp_rcv_lowat, ", "iomgr", "tcp_rcv_lowat,-event_engine_listener"),
        # Already asked so: left as it is.
        ("event_engine_listener", "eventengine", "event_engine_listener"),
        ("-event_engine_listener,x", "iomgr", "-event_engine_listener,x"),
        # gRPC: the last mention wins.
        ("-event_engine_listener,event_engine_listener", "eventengine", None),
        # gRPC takes one "-" off: this names an experiment it does not know, not ours.
        ("--event_engine_listener", "iomgr", "--event_engine_listener,-event_engine_listener"),
    ],
)
def test_serve_asks_grpc_for_its_listener_beside_other_experiments(
    experiments: str, chosen: Listener, asked: str | None
) -> None:
    environ = {"GRPC_EXPERIMENTS": experiments}
    grpc_listener.ask(environ, chosen)
    assert environ["GRPC_EXPERIMENTS"] == (asked or experiments)
    assert grpc_listener.listener(environ) == chosen


@pytest.mark.parametrize(
    ("experiments", "chosen"),
    [
        ("-event_engine_listener", "eventengine"),
        ("event_engine_listener", "iomgr"),
        ("tcp_rcv_lowat,event_engine_listener,-event_engine_listener", "eventengine"),
    ],
)
def test_an_environment_that_asks_for_the_other_listener_is_refused(
    experiments: str, chosen: Listener
) -> None:
    environ = {"GRPC_EXPERIMENTS": experiments}
    with pytest.raises(ValueError, match="choose with --grpc-listener"):
        grpc_listener.ask(environ, chosen)
    assert environ == {"GRPC_EXPERIMENTS": experiments}
    assert grpc_listener.listener({}) == "eventengine"  # gRPC's default


def test_the_command_line_loads_no_grpc_before_serve_chooses() -> None:
    # gRPC reads GRPC_EXPERIMENTS once, as it loads: a module of the command line that
    # imported grpc would leave `serve` no choice.
    code = (
        "import sys, actionstream.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('grpc')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _serve_and_connect(log_path: Path, env: dict[str, str], *args: str) -> tuple[str, str]:
    """Starts a real `actionstream serve ARGS` with `env` added to its environment and
    gRPC's own tracing of its TCP layer on, connects once, and returns its log and the
    listener its ready file names."""
    env = {**env, "GRPC_VERBOSITY": "debug", "GRPC_TRACE": "tcp"}
    with log_path.open("w+") as log, ServeProcess(log, args=list(args), env=env) as server:
        # The server relays native log lines at 10 a second; let its start-up lines pass.
        time.sleep(1.2)
        with grpc.insecure_channel(server.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        time.sleep(0.3)
    return log_path.read_text(), server.ready["grpc_listener"]


def _assert_listener(served: tuple[str, str], listener: str, processes: int) -> None:
    log, ready = served
    assert ready == listener
    assert "Unknown experiment" not in log, "this grpcio no longer has the experiment"
    assert log.count(f"gRPC listener {listener}") == processes, log
    # gRPC's own trace: iomgr's listener is tcp_server_posix.cc and its connections
    # tcp_posix.cc; the EventEngine's connections log from endpoint.cc.
    iomgr = "tcp_server_posix.cc" in log and "SERVER_CONNECT" in log
    event_engine = "endpoint.cc:" in log
    assert (iomgr, event_engine) == (listener == "iomgr", listener == "eventengine"), log


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_serve_reads_connections_with_grpcs_event_engine_listener(
    tmp_path: Path, workers: int
) -> None:
    # An empty GRPC_EXPERIMENTS, as on a fresh machine.
    env = {"GRPC_EXPERIMENTS": ""}
    served = _serve_and_connect(tmp_path / "serve.log", env, "--workers", str(workers))
    _assert_listener(served, "eventengine", workers)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_an_operator_can_choose_iomgrs_listener(tmp_path: Path, workers: int) -> None:
    env = {"GRPC_EXPERIMENTS": "", "ACTIONSTREAM_GRPC_LISTENER": "iomgr"}
    served = _serve_and_connect(tmp_path / "serve.log", env, "--workers", str(workers))
    _assert_listener(served, "iomgr", workers)  # the workers inherit it


def test_serve_refuses_a_grpc_experiments_that_asks_for_the_other_listener() -> None:
    env = {**os.environ, "GRPC_EXPERIMENTS": "-event_engine_listener"}
    out = subprocess.run(
        [sys.executable, "-m", "actionstream", "serve", "--port", "0", "--metrics-port", "-1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 1
    assert "asks gRPC for its iomgr listener, and --grpc-listener is eventengine" in out.stderr


def _flood(port: int, seconds: float, connections: int) -> subprocess.Popen[str]:
    """tests/h2_flood.py against `port`, in a process of its own (its threads share no
    interpreter lock with this one's client), niced as another machine's would not be."""
    return subprocess.Popen(
        [sys.executable, str(FLOOD), str(port), str(seconds), str(connections)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.nice(10),
    )


def _flooded(flood: subprocess.Popen[str]) -> dict[str, int]:
    out, _ = flood.communicate(timeout=60)
    assert flood.returncode == 0
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_a_ping_flood_leaves_the_other_streams_live(tmp_path: Path) -> None:
    # Under gRPC's iomgr listener, which reads every connection on one thread, two such
    # connections left a camera beside them unanswered for as long as they sent.
    frames = [jpeg(f) for f in render(10, seed=5)]
    with (tmp_path / "serve.log").open("w+") as log, ServeProcess(log) as server:
        camera = LiveStream(stub_for(server.port), pb.StreamOptions(stream_name="camera"))
        waits = []
        flood = None
        try:
            for t in range(80):  # 8 s at 10 fps, the flood from the second second
                if t == 10:
                    flood = _flood(server.port, seconds=6, connections=2)
                sent = time.monotonic()
                camera.send(frame_request(frames[t % len(frames)]))
                waits.append(time.monotonic() - sent)
                time.sleep(max(0.0, 0.1 - waits[-1]))
            camera.close()
        except BaseException:
            if flood is not None:
                flood.kill()
            raise
    assert flood is not None
    flooded = _flooded(flood)
    assert flooded["pings"] > 10_000 and flooded["goaways"] > 0, flooded  # a real flood
    assert max(waits) < 2.0, sorted(waits)[-5:]


@pytest.mark.slow
@pytest.mark.parametrize(("grace", "stops"), [(1, 1), (60, 2)])
def test_a_server_stopped_during_a_ping_flood_exits_in_its_bound(
    tmp_path: Path, grace: int, stops: int
) -> None:
    # gRPC's stop waits until it has closed every connection, and it reads what a
    # connection sent first: the server exited only when the flood ended, and a second
    # stop did not hurry it.
    with (
        (tmp_path / "serve.log").open("w+") as log,
        ServeProcess(log, args=["--grace-seconds", str(grace)]) as server,
    ):
        flood = _flood(server.port, seconds=40, connections=2)
        try:
            time.sleep(2)
            stopping = time.monotonic()
            for _ in range(stops):
                os.kill(server.pid, signal.SIGTERM)
                time.sleep(0.3)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.wait(timeout=30)
            took = time.monotonic() - stopping
            code = server.poll()
        finally:
            flood.kill()
            flood.wait()
    said = Path(log.name).read_text()
    # The grace (or none, stopped again), half a second for the streams' own ends, 2 s
    # for gRPC to close its connections, a second for the sources, then the exit.
    bound = (grace if stops == 1 else 0) + 7.0
    assert code == 0 and took < bound, (code, took, said[-2000:])
