"""`actionstream serve` as a real process: ports in its ready file, grpcurl, SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import LiveStream, MjpegCamera, frame_request, jpeg, render

from actionstream.contract import read_props
from actionstream.serve_process import ServeProcess, ServeProcessError
from actionstream.service.clients.scrape import scrape
from actionstream.service.inference.model import bundled_model_path
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[str]]:
    with (tmp_path / "server.log").open("w+") as f:
        yield f


def _grpcurl(*args: str) -> str:
    done = subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(reply.status)


def _terminate(server: ServeProcess, sig: signal.Signals) -> int:
    start = time.monotonic()
    os.kill(server.pid, sig)
    code = server.stop(timeout=10)
    assert time.monotonic() - start < 5
    return code


def _bundled_version() -> str:
    """The version the bundled model's own file records."""
    session = ort.InferenceSession(str(bundled_model_path()), providers=["CPUExecutionProvider"])
    return read_props(session.get_modelmeta().custom_metadata_map, "default.onnx").version


def test_serve_process_with_grpcurl(log: IO[str]) -> None:
    with ServeProcess(log) as server:
        services = _grpcurl(server.target, "list").split()
        assert "actionstream.v1.ActionRecognition" in services
        assert "grpc.health.v1.Health" in services
        health = json.loads(_grpcurl(server.target, "grpc.health.v1.Health/Check"))
        assert health == {"status": "SERVING"}
        info = json.loads(_grpcurl(server.target, "actionstream.v1.ActionRecognition/GetModelInfo"))
        assert info["version"] == _bundled_version()
        assert re.fullmatch(r"synthetic-64px-seed0-[0-9a-f]{8}", info["version"])

        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        assert "actionstream_active_streams 0.0" in text
        # The process's own figures, as any exporter gives them.
        values = scrape(server.metrics_port)
        assert values["process_resident_memory_bytes"] > 50e6  # onnxruntime, the model, OpenCV
        assert values["process_cpu_seconds_total"] > 0 and values["process_open_fds"] > 3
        assert abs(values["process_start_time_seconds"] - time.time()) < 120
        # What the usual "open files / their limit" and virtual memory panels read.
        assert values["process_max_fds"] == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert values["process_virtual_memory_bytes"] > values["process_resident_memory_bytes"]
        # No `_created` series beside the counters and histograms: they doubled the count.
        assert not [name for name in values if "_created" in name]
        assert _terminate(server, signal.SIGTERM) == 0


def test_the_connections_on_the_grpc_port_are_counted_beside_their_cap(log: IO[str]) -> None:
    # gRPC closes a connection beyond --max-connections before the service sees it: only
    # the count at its cap tells an operator why a camera cannot connect.
    with ServeProcess(log, args=["--max-connections", "5"]) as server:
        assert server.metrics_port is not None
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        try:
            deadline = time.monotonic() + 10
            while (values := scrape(server.metrics_port))["actionstream_connections"] != 3:
                assert time.monotonic() < deadline, values["actionstream_connections"]
                time.sleep(0.05)
            assert values["actionstream_max_connections"] == 5
        finally:
            for sock in held:
                sock.close()
        deadline = time.monotonic() + 10
        while scrape(server.metrics_port)["actionstream_connections"] != 0:
            assert time.monotonic() < deadline, "closed connections still counted"
            time.sleep(0.05)
        assert _terminate(server, signal.SIGTERM) == 0


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process `pid` has a handler of its own for `sig` (the kernel's SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M)[1], 16)  # type: ignore[index]
    return bool(caught >> (sig - 1) & 1)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_while_starting_stops_it_once_up(log: IO[str], tmp_path: Path, workers: int) -> None:
    # `docker stop` in a container's first second: the server was still importing and
    # loading its model. The SIGTERM killed it (exit 143), and to a container's PID 1,
    # which has no default signal actions, it was nothing at all.
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "actionstream", "serve", "--host", "127.0.0.1", "--port", "0"]
    server = subprocess.Popen(
        [*cmd, "--metrics-port", "-1", "--workers", str(workers), "--ready-file", str(ready)],
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 30
        while not _catches(server.pid, signal.SIGTERM):  # as soon as `serve` takes it
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.005)
        assert not ready.exists()  # still starting
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
    log.seek(0)
    text = log.read()
    assert "asked to stop while starting" in text and "stopped" in text, text
    assert "actionstream serving" not in text, text  # it never said it served


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hang-up"])
def test_a_second_stop_ends_the_open_streams_at_once(log: IO[str], sig: signal.Signals) -> None:
    # A grace period of a minute, and an operator who does not want to wait for it. A
    # hang-up (the terminal or SSH session closed) killed the server without its drain.
    with (
        ServeProcess(log, args=["--grace-seconds", "60"]) as server,
        grpc.insecure_channel(server.target) as channel,
    ):
        stream = LiveStream(pb_grpc.ActionRecognitionStub(channel), pb.StreamOptions())
        [image] = render(1, seed=3)
        assert stream.send(frame_request(jpeg(image), sequence=1)).sequence == 1
        started = time.monotonic()
        os.kill(server.pid, sig)
        time.sleep(1.0)
        assert server.poll() is None  # draining: the stream has a minute
        os.kill(server.pid, sig)
        assert server.stop(timeout=20) == 0
        assert time.monotonic() - started < 10
        with pytest.raises(grpc.RpcError) as ended:
            stream.outcome()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    log.seek(0)
    assert "asked again: ending the open streams now" in log.read()


def test_a_stalled_camera_does_not_hold_the_stop(log: IO[str]) -> None:
    # Its read returns only at the read timeout (30 s here): the interpreter waited for
    # that thread as it exited, far past docker's 10-s stop timeout.
    camera = MjpegCamera(list(render(3, seed=4)))  # then silent, the connection open
    try:
        with (
            ServeProcess(log, args=["--allow-sources", "--grace-seconds", "0.5"]) as server,
            grpc.insecure_channel(server.target) as channel,
        ):
            stub = pb_grpc.ActionRecognitionStub(channel)
            watch = stub.WatchSource(pb.SourceRequest(source=camera.url))
            next(watch)  # a frame answered: its next read waits on the silent camera
            stopped = time.monotonic()
            assert server.stop(timeout=30) == 0
            assert time.monotonic() - stopped < 8
            with pytest.raises(grpc.RpcError) as ended:
                list(watch)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        camera.close()
    log.seek(0)
    assert "without waiting for 1 source read(s) still in OpenCV" in log.read()


def test_json_logs_stay_json_lines_when_frames_are_corrupt(log: IO[str]) -> None:
    import cv2
    import numpy as np

    from actionstream.v1 import actionstream_pb2 as pb
    from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

    image = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    # A flipped byte in the image data's checksum: the chunks are whole and the data
    # inflates to the image (the server's own checks pass), and libpng finds the CRC
    # wrong and says so on stderr.
    png = bytearray(cv2.imencode(".png", image)[1].tobytes())
    idat = png.find(b"IDAT")
    png[idat + 4 + int.from_bytes(png[idat - 4 : idat], "big")] ^= 0xFF
    damaged_png = pb.FrameRequest(frame=pb.Frame(encoded=bytes(png)))
    # Damaged entropy data that still decodes: libjpeg prints a line for each such frame.
    damaged = bytearray(cv2.imencode(".jpg", image)[1].tobytes())
    damaged[len(damaged) // 2 : len(damaged) // 2 + 40] = bytes(40)
    t0 = 1_700_000_000_000_000

    def frames() -> Iterator[pb.FrameRequest]:
        for i in range(60):  # paced, so that nearly all are decoded rather than dropped
            time.sleep(0.015)
            yield pb.FrameRequest(
                frame=pb.Frame(encoded=bytes(damaged), timestamp_us=t0 + i * 100_000)
            )

    with ServeProcess(log, args=["--log-format", "json"]) as server:
        with grpc.insecure_channel(server.target) as channel:
            stub = pb_grpc.ActionRecognitionStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.StreamFrames(iter([damaged_png]), timeout=10))
            started = time.monotonic()
            answered = list(stub.StreamFrames(frames(), timeout=30))
            seconds = time.monotonic() - started
        time.sleep(1.5)  # the relay counts what it held back within a second
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(answered) >= 30
        assert _terminate(server, signal.SIGTERM) == 0
    log.seek(0)
    records = [json.loads(line) for line in log.read().splitlines()]  # every line is JSON
    native = [r for r in records if r["logger"] == "actionstream.native"]
    corrupt = [r for r in native if r["message"].startswith("Corrupt JPEG data")]
    held_back = [
        int(r["message"].split()[0]) for r in native if r["message"].endswith("were not logged")
    ]
    # libjpeg's lines (one per decoded damaged frame) arrive as log records, at most 10 a
    # second, and the rest are counted.
    assert corrupt
    assert len(corrupt) <= 10 * (int(seconds) + 2)
    assert len(corrupt) + sum(held_back) == len(answered)
    assert any(r["message"].startswith("libpng error") for r in native)  # the damaged PNG
    assert not any(r["message"].startswith("[ WARN") for r in native)  # OpenCV's own: off


def test_a_server_that_crashes_leaves_its_threads_tracebacks(log: IO[str]) -> None:
    # fd 2 is a pipe to a thread of the server's own (see native_stderr.py), which dies
    # with it: the crash report must go to the real stderr.
    with ServeProcess(log) as server:
        os.kill(server.pid, signal.SIGSEGV)
        deadline = time.monotonic() + 15
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # it dies of the signal itself: no SIGTERM to mix in
        assert server.poll() == -signal.SIGSEGV
    log.seek(0)
    text = log.read()
    assert "Fatal Python error: Segmentation fault" in text
    # Every thread's stack, whichever thread the signal reached: the main thread's runs
    # down to the server's own entry point.
    assert "most recent call first" in text and "in _run_server" in text


def test_a_server_with_metrics_off_starts_and_says_so(log: IO[str], tmp_path: Path) -> None:
    # The stdout handshake this replaced could not start such a server at all.
    with ServeProcess(log, args=["--metrics-port", "-1"]) as server:
        assert server.metrics_port is None
        assert _health(server.target) == health_pb2.HealthCheckResponse.SERVING
        assert _terminate(server, signal.SIGTERM) == 0


def test_serve_reads_its_settings_from_the_environment(log: IO[str]) -> None:
    env = {
        "ACTIONSTREAM_HOST": "127.0.0.1",
        "ACTIONSTREAM_PORT": "0",
        "ACTIONSTREAM_METRICS_PORT": "-1",
    }
    with ServeProcess(log, env=env, flags=()) as server:
        assert server.metrics_port is None
        assert server.port != 50051
        assert _health(server.target) == health_pb2.HealthCheckResponse.SERVING
        done = subprocess.run(
            [str(BIN / "actionstream"), "health"],
            env={**os.environ, "ACTIONSTREAM_PORT": str(server.port)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0 and "SERVING" in done.stdout, done.stderr
        # The host too, as the container's health check finds it beside the server: a
        # listen-on-everything address means this machine, any other is dialled.
        for host, serving in (("0.0.0.0", True), ("127.0.0.2", False)):
            beside = {"ACTIONSTREAM_HOST": host, "ACTIONSTREAM_PORT": str(server.port)}
            asked = subprocess.run(
                [str(BIN / "actionstream"), "health", "--timeout", "2"],
                env={**os.environ, **beside},
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert (asked.returncode == 0) == serving, (host, asked.stdout, asked.stderr)
        unknown = subprocess.run(
            [str(BIN / "actionstream"), "health", "--port", str(server.port), "--service", "x.Y"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert unknown.returncode == 1
        assert unknown.stdout.strip() == (
            f"127.0.0.1:{server.port}: NOT_FOUND: the server has no health status for service 'x.Y'"
        )
        assert _terminate(server, signal.SIGINT) == 0
    # The ready file goes with the server; `health` then says it is unreachable.
    done = subprocess.run(
        [str(BIN / "actionstream"), "health", "--port", str(server.port), "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1 and "UNAVAILABLE" in done.stdout


# onnxruntime stays quiet on its own where one of these says it runs under CI (checked here by
# setting each); a test that wants to see it report must not inherit them from a CI runner.
_CI_MARKERS = (
    "CI",
    "TF_BUILD",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "TRAVIS",
    "JENKINS_URL",
    "CODEBUILD_BUILD_ID",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "APPVEYOR",
    "BITBUCKET_BUILD_NUMBER",
)


def _files_written_by_a_server(log: IO[str], root: Path, setting: str | None) -> list[str]:
    """Starts and stops a server with its own home and cache; what it left in them."""
    home, cache = root / "home", root / "cache"
    home.mkdir(parents=True)
    cache.mkdir()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(cache)}
    if setting is not None:
        env["ORT_DISABLE_TELEMETRY"] = setting
    with ServeProcess(log, env=env) as server:
        assert _health(server.target) == health_pb2.HealthCheckResponse.SERVING
    return sorted(p.name for d in (home, cache) for p in d.rglob("*") if p.is_file())


def test_onnxruntime_reports_nothing_unless_an_operator_asks(
    log: IO[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime's telemetry, on by default in its PyPI builds, writes a device id under
    # $XDG_CACHE_HOME (else ~/.cache) as it starts, before it looks up its events host: a
    # cache and home it wrote nothing to is a server that sent nothing. The control comes
    # first, an operator opting back in with ORT_DISABLE_TELEMETRY=0: where even that writes
    # nothing, an empty cache would prove nothing, and the test says so instead of passing.
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)  # as a fresh shell has it
    for marker in _CI_MARKERS:
        monkeypatch.delenv(marker, raising=False)
    opted_in = _files_written_by_a_server(log, tmp_path / "opted_in", "0")
    if "deviceid" not in opted_in:
        pytest.skip(f"onnxruntime wrote no device id here even when asked to ({opted_in})")
    assert _files_written_by_a_server(log, tmp_path / "default", None) == []


def test_a_server_that_cannot_start_is_reported_not_waited_for(log: IO[str]) -> None:
    start = time.monotonic()
    # The error says why: load.py's "the server exited with 1; its log: 3" named a
    # temporary file's descriptor, and the file was gone (a developer's trial).
    with pytest.raises(
        ServeProcessError,
        match=r"exited with 1: actionstream serve: /nonexistent/model\.onnx: no such model file"
        r"; its log: ",
    ):
        ServeProcess(log, args=["--model", "/nonexistent/model.onnx"])
    with tempfile.TemporaryFile("w+") as unnamed, pytest.raises(ServeProcessError) as raised:
        ServeProcess(unnamed, args=["--model", "/nonexistent/model.onnx"])
    assert str(raised.value) == (
        "the server exited with 1: actionstream serve: /nonexistent/model.onnx: no such model file"
    )
    assert time.monotonic() - start < 30
    log.seek(0)
    assert "no such model file" in log.read()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_unwritable_ready_file_is_a_clear_error(tmp_path: Path, workers: str) -> None:
    afile = tmp_path / "afile"
    afile.write_text("in the way")
    # A missing folder, a file where the folder must be (removing the file that was
    # never written failed then too, with a traceback), and a folder in the file's place.
    # Found before anything starts: the workers started, and stopped, first.
    for ready in ("/nonexistent/dir/ready.json", str(afile / "ready.json"), str(tmp_path)):
        done = subprocess.run(
            [
                *(str(BIN / "actionstream"), "serve", "--host", "127.0.0.1", "--port", "0"),
                *("--metrics-port", "-1", "--ready-file", ready, "--workers", workers),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        assert f"cannot write the ready file {ready}" in done.stderr
        assert "Traceback" not in done.stderr
        assert "shutting down" not in done.stderr and "stopped" not in done.stderr
    assert sorted(tmp_path.iterdir()) == [afile]  # no probe left behind


def test_a_busy_port_is_said_in_the_systems_words_and_in_the_logs_format() -> None:
    # gRPC's own message hid the reason ("Failed to bind ...; set GRPC_VERBOSITY=debug").
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = [str(BIN / "actionstream"), "serve", "--host", "127.0.0.1", "--port", str(port)]
        for fmt in ("text", "json"):
            done = subprocess.run(
                [*serve, "--metrics-port", "-1", "--log-format", fmt],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 1
            # gRPC's own line for it (its reason buried in a long message) is left out.
            assert "add_port" not in done.stderr
            last = done.stderr.strip().splitlines()[-1]
            said = f"actionstream serve: cannot listen on 127.0.0.1:{port}: Address already in use"
            if fmt == "json":
                assert json.loads(last)["message"] == said and json.loads(last)["level"] == "ERROR"
            else:
                assert last == said


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
