"""`actionstream serve --workers 2`: two real server processes sharing one port."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import grpc
import numpy as np
import pytest
from helpers import LiveStream, assert_matches, frame_request, jpeg, render

from actionstream.serve_process import ServeProcess, ServeProcessError
from actionstream.service.clients.scrape import scrape
from actionstream.service.config import ServeConfig
from actionstream.service.endpoint.workers import _reserve_port, _worker_config, share_of
from actionstream.service.inference.model import OnnxStepModel, bundled_model_path
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

Reference = Callable[[Sequence[np.ndarray]], np.ndarray]
STREAMS = 16  # all on one worker by chance: 2 in 2**16


@pytest.fixture
def log(tmp_path: Path) -> Iterator[IO[str]]:
    with (tmp_path / "server.log").open("w+") as f:
        yield f


def _connections(pid: int, port: int) -> int:
    """Established TCP connections process `pid` holds on its local `port`."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def _rss(pid: int) -> int:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.parametrize(
    ("sig", "again_to_group"),
    [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, True)],
    ids=["ctrl-c-twice-at-a-terminal", "systemd-stop-then-kill-again", "terminal-closed-twice"],
)
def test_one_stop_drains_the_workers_and_a_second_ends_their_streams(
    tmp_path: Path, log: IO[str], sig: signal.Signals, again_to_group: bool
) -> None:
    # A terminal's Ctrl-C reaches the whole process group, and systemd's stop the whole
    # cgroup: each worker took it as one stop and the supervisor's SIGTERM after it as a
    # second, cutting the streams at once. A second stop sent to the supervisor alone
    # (`kill` again, `docker kill -s TERM`) never reached the workers.
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "actionstream", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--metrics-port", "-1", "--workers", "2", "--max-streams", "16"]
    cmd += ["--grace-seconds", "60", "--ready-file", str(ready)]
    server = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        target = f"127.0.0.1:{json.loads(ready.read_text())['port']}"
        with grpc.insecure_channel(target) as channel:
            stream = LiveStream(pb_grpc.ActionRecognitionStub(channel), pb.StreamOptions())
            [image] = render(1, seed=3)
            assert stream.send(frame_request(jpeg(image), sequence=1)).sequence == 1
            os.killpg(server.pid, sig)
            time.sleep(2.0)
            assert server.poll() is None  # draining: the stream has a minute
            started = time.monotonic()
            if again_to_group:
                os.killpg(server.pid, sig)
            else:
                os.kill(server.pid, sig)
            assert server.wait(timeout=30) == 0
            assert time.monotonic() - started < 15
            with pytest.raises(grpc.RpcError) as ended:
                stream.outcome()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_workers_share_max_streams_exactly() -> None:
    # Rounded up per worker, --workers 2 --max-streams 1 took two streams.
    for total, workers in ((4, 2), (5, 2), (7, 3), (2, 2), (100, 16)):
        shares = [share_of(total, workers, i) for i in range(workers)]
        assert sum(shares) == total and max(shares) - min(shares) <= 1, shares
    with pytest.raises(ValueError, match=r"max_streams \(1\) must be at least workers \(2\)"):
        ServeConfig(max_streams=1, workers=2)
    with pytest.raises(ValueError, match=r"max_connections must be at least 1 \(and workers"):
        ServeConfig(max_connections=1, workers=2)
    # The connections too, set or derived (four per place, at least 1024).
    for cfg in (ServeConfig(workers=3, max_connections=10), ServeConfig(workers=3)):
        shares = [_worker_config(cfg, 1, Path("/tmp"), i).max_connections for i in range(3)]
        assert sum(s for s in shares if s) == cfg.connections_cap, shares


def test_workers_share_the_port_and_keep_each_streams_state(
    log: IO[str], reference: Reference, model: OnnxStepModel
) -> None:
    with ServeProcess(log, args=["--workers", "2"]) as server:
        assert server.metrics_port is not None
        channels = [
            # A connection of its own per stream, as separate cameras have.
            grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(STREAMS)
        ]
        try:
            streams = [
                LiveStream(pb_grpc.ActionRecognitionStub(c), pb.StreamOptions(top_k=9))
                for c in channels
            ]
            clips = [render(6, seed=100 + i) for i in range(STREAMS)]
            got: list[list[pb.Prediction]] = [[] for _ in range(STREAMS)]
            for t in range(6):  # interleaved: every stream one frame, then the next frame
                for clip, live, out in zip(clips, streams, got, strict=True):
                    out.append(live.send(frame_request(jpeg(clip[t]))))
            workers = _worker_pids(server)
            held = [_connections(pid, server.port) for pid in workers]
            supervisor_maps = Path(f"/proc/{server.pid}/maps").read_text()
            values = scrape(server.metrics_port)
            resident = [_rss(pid) for pid in (server.pid, *workers)]
            for live in streams:
                live.close()
        finally:
            for c in channels:
                c.close()
        # The kernel spread the connections over both workers...
        assert sum(held) == STREAMS and min(held) > 0, held
        # ...and the one /metrics adds both up.
        assert values["actionstream_active_streams"] == STREAMS
        assert values["actionstream_frames_processed_total"] == STREAMS * 6
        # Each worker's connections, summed, beside the cap they share.
        assert values["actionstream_connections"] == STREAMS
        assert values["actionstream_max_connections"] == 1024
        assert any(k.startswith("actionstream_model_info{") for k in values)
        # process_* covers the supervisor and its workers together (a worker's model alone
        # is about 100 MB), read as the kernel counts each.
        assert values["process_resident_memory_bytes"] == pytest.approx(sum(resident), rel=0.1)
        assert values["process_resident_memory_bytes"] > 2 * 100e6
        # The supervisor loads neither onnxruntime nor OpenCV: the workers do the work.
        assert "onnxruntime" not in supervisor_maps and "cv2" not in supervisor_maps
        # Each stream's state stayed on the worker that holds its connection.
        for clip, out in zip(clips, got, strict=True):
            assert_matches(out, reference([_decoded(f) for f in clip]), model.metadata.labels)
        assert server.stop() == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the server"


def test_workers_share_the_side_call_cap(log: IO[str]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # Two Watch calls in all, one per worker: the cap is the server's, not each process's.
    with ServeProcess(log, args=["--workers", "2", "--max-side-calls", "2"]) as server:
        channels = [
            grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(12)
        ]
        request = health_pb2.HealthCheckRequest(service="")
        held, refused = [], 0
        try:
            for channel in channels:
                watch = health_pb2_grpc.HealthStub(channel).Watch(request)
                try:
                    next(watch)
                    held.append(watch)
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    refused += 1
        finally:
            for watch in held:
                watch.cancel()
            for channel in channels:
                channel.close()
        # At most one a worker; two unless all 12 connections landed on one (2 in 2**12).
        assert len(held) <= 2 and refused >= 10
        assert server.stop() == 0


def _decoded(image: np.ndarray) -> np.ndarray:
    """What the server sees of a frame sent as JPEG: the decoded JPEG."""
    import cv2

    decoded: np.ndarray = cv2.imdecode(np.frombuffer(jpeg(image), np.uint8), cv2.IMREAD_COLOR)
    return decoded


def _worker_pids(server: ServeProcess) -> list[int]:
    pids: list[int] = server.ready["workers"]
    assert len(pids) == 2
    return pids


def _serving_in_place_of(server: ServeProcess, dead: Sequence[int]) -> list[int]:
    """The workers' pids once the supervisor has replaced each of `dead` and says so."""
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, "the server exited instead of replacing a worker"
        pids: list[int] = json.loads(server.ready_file.read_text())["workers"]
        if not set(pids) & set(dead):
            return pids
        assert time.monotonic() < deadline, "no worker was started in a dead one's place"
        time.sleep(0.1)


def test_a_dead_worker_is_replaced_and_the_others_streams_go_on(
    log: IO[str], reference: Reference, model: OnnxStepModel
) -> None:
    # A worker that died (a crash in native code, the OOM killer) stopped the whole
    # server, cutting the streams of every other worker with it.
    with ServeProcess(log, args=["--workers", "2"]) as server:
        assert server.metrics_port is not None
        dead, survivor = _worker_pids(server)
        channels = [
            grpc.insecure_channel(server.target, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(2 * STREAMS)
        ]
        try:
            streams = [
                LiveStream(pb_grpc.ActionRecognitionStub(c), pb.StreamOptions(top_k=9))
                for c in channels[:STREAMS]
            ]
            clips = [render(4, seed=200 + i) for i in range(STREAMS)]
            got: list[list[pb.Prediction]] = [[] for _ in range(STREAMS)]
            for t in range(2):
                for clip, live, out in zip(clips, streams, got, strict=True):
                    out.append(live.send(frame_request(jpeg(clip[t]))))
            on_dead = _connections(dead, server.port)
            assert 0 < on_dead < STREAMS  # both workers hold some (2 in 2**16 not)
            cpu_before = scrape(server.metrics_port)["process_cpu_seconds_total"]
            os.kill(dead, signal.SIGKILL)
            lost = 0
            for t in range(2, 4):
                for clip, live, out in zip(clips, streams, got, strict=True):
                    if len(out) < t:
                        continue  # lost with its worker
                    try:
                        out.append(live.send(frame_request(jpeg(clip[t]))))
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE
                        lost += 1
            assert lost == on_dead
            pids = _serving_in_place_of(server, [dead])
            [new] = set(pids) - {survivor}
            assert survivor in pids and Path(f"/proc/{new}").exists()
            values = scrape(server.metrics_port)
            # New cameras are spread over the survivor and the new worker alike.
            fresh = [
                LiveStream(pb_grpc.ActionRecognitionStub(c), pb.StreamOptions())
                for c in channels[STREAMS:]
            ]
            for i, live in enumerate(fresh):
                assert live.send(frame_request(jpeg(render(1, seed=300 + i)[0]), sequence=1))
            on_new = _connections(new, server.port)
            for live in (*streams, *fresh):
                with contextlib.suppress(grpc.RpcError):
                    live.close()
        finally:
            for c in channels:
                c.close()
        assert values["actionstream_worker_restarts_total"] == 1
        # The dead worker's streams left the gauge with it; the survivor's are all there.
        assert values["actionstream_active_streams"] == STREAMS - on_dead
        # A counter: the dead worker's CPU seconds stay in it.
        assert values["process_cpu_seconds_total"] >= cpu_before
        assert on_new > 0  # (1 in 2**16 not)
        # The survivor's streams went on with their state, frame for frame.
        for clip, out in zip(clips, got, strict=True):
            if len(out) == 4:
                assert_matches(out, reference([_decoded(f) for f in clip]), model.metadata.labels)
        assert server.stop() == 0
    log.seek(0)
    text = log.read()
    assert f"(pid {dead}) exited with -{int(signal.SIGKILL)}; starting another in its place" in (
        text
    )
    assert f"(pid {new}) is serving" in text


def test_workers_that_keep_dying_stop_the_server(log: IO[str]) -> None:
    with ServeProcess(log, args=["--workers", "2"]) as server:
        first = _worker_pids(server)
        for pid in first:
            os.kill(pid, signal.SIGKILL)
        second = _serving_in_place_of(server, first)
        for pid in second:  # the third and fourth deaths within a minute
            os.kill(pid, signal.SIGKILL)
        assert server.wait(30) == 1
    log.seek(0)
    text = log.read()
    assert f"exited with -{int(signal.SIGKILL)}, 4 workers dead within 60s" in text, text
    assert "Traceback" not in text


def test_a_replacement_that_cannot_start_stops_the_server_with_its_reason(
    log: IO[str], tmp_path: Path
) -> None:
    served = tmp_path / "model.onnx"
    served.write_bytes(bundled_model_path().read_bytes())
    with ServeProcess(log, args=["--workers", "2", "--model", str(served)]) as server:
        served.write_bytes(b"not a model")  # a broken deploy, under the running server
        os.kill(_worker_pids(server)[0], signal.SIGKILL)
        assert server.wait(60) == 1
    log.seek(0)
    text = log.read()
    assert "model.onnx: not a loadable ONNX model" in text, text
    assert "Traceback" not in text


def _gone(pid: int) -> bool:
    """Exited: no such process, or one exited and not yet reaped by its new parent."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return re.search(r"^State:\s*Z", status, re.M) is not None


def test_workers_stop_when_their_supervisor_is_killed(log: IO[str], tmp_path: Path) -> None:
    # A supervisor killed outright (SIGKILL, the OOM killer) left its workers serving the
    # port with no /metrics, and a new `serve` on that port was refused as in use.
    with ServeProcess(log, args=["--workers", "2", "--grace-seconds", "3"]) as server:
        pids = _worker_pids(server)
        port = server.port
        with grpc.insecure_channel(server.target) as channel:
            stream = LiveStream(pb_grpc.ActionRecognitionStub(channel), pb.StreamOptions())
            [image] = render(1, seed=3)
            assert stream.send(frame_request(jpeg(image), sequence=1)).sequence == 1
            os.kill(server.pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            try:
                while not all(_gone(pid) for pid in pids):
                    assert time.monotonic() < deadline, "the workers outlived their supervisor"
                    time.sleep(0.1)
            finally:  # none left serving the port whatever the outcome
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            # They stopped as on SIGTERM: the open stream was ended, not cut.
            with pytest.raises(grpc.RpcError) as ended:
                stream.outcome()
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (ended.value.details() or "")
    with ServeProcess(log, args=["--port", str(port), "--workers", "2"]) as again:
        assert again.port == port


def test_workers_never_join_a_port_another_server_holds(log: IO[str], tmp_path: Path) -> None:
    second_log = (tmp_path / "second.log").open("w+")
    with second_log, ServeProcess(log) as plain:
        with pytest.raises(ServeProcessError, match="exited with 1"):
            ServeProcess(second_log, args=["--workers", "2", "--port", str(plain.port)])
        second_log.seek(0)
        assert "cannot listen on 127.0.0.1:" in second_log.read()
    # Nor does a plain server join the workers' port, nor another server's workers
    # (theirs share it with SO_REUSEPORT, as another user's of the same uid could).
    third_log = (tmp_path / "third.log").open("w+")
    with third_log, ServeProcess(log, args=["--workers", "2"]) as workers:
        with pytest.raises(ServeProcessError, match="exited with 1"):
            ServeProcess(third_log, args=["--port", str(workers.port)])
        third_log.seek(0)
        third_log.truncate()
        with pytest.raises(ServeProcessError, match="exited with 1"):
            ServeProcess(third_log, args=["--workers", "2", "--port", str(workers.port)])
        third_log.seek(0)
        assert "Address already in use" in third_log.read()
        with socket.create_connection(("127.0.0.1", workers.port), timeout=5):
            pass  # still serving


def _time_wait(port: int) -> int:
    """Connections in TIME_WAIT whose local end is `port` (closed by this side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":
                count += 1
    return count


def _left_in_time_wait() -> int:
    """A loopback port whose last server closed a connection first, as a server that
    stops cuts its streams: that connection waits out TIME_WAIT (up to a minute) on the
    port. The listener is a plain server's: SO_REUSEADDR, no SO_REUSEPORT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server's side first
            assert client.recv(1) == b""
    assert _time_wait(port) > 0
    return port


def test_workers_start_on_a_port_a_plain_server_just_left(log: IO[str]) -> None:
    # An operator restarts a server with --workers 2 on its port.
    port = _left_in_time_wait()
    with ServeProcess(log, args=["--workers", "2", "--port", str(port)]) as workers:
        assert workers.port == port
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass


def test_a_model_the_workers_cannot_load_is_one_clear_failure(log: IO[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ServeProcessError, match="exited with 1"):
        ServeProcess(log, args=["--workers", "2", "--model", str(bad)])
    log.seek(0)
    text = log.read()
    # Both workers fail alike; the supervisor says so once, as a single server would.
    assert text.count("bad.onnx: not a loadable ONNX model") == 1, text
    assert "actionstream serve: " in text
    assert "Traceback" not in text


def test_a_replacement_that_would_serve_another_model_stops_the_server(
    log: IO[str], tmp_path: Path
) -> None:
    # A model file replaced by another valid one under the server (a volume updated in
    # place): the replacement served it beside the others' model, and the ready file and
    # the serving line went on naming the first.
    import onnx

    served = tmp_path / "model.onnx"
    served.write_bytes(bundled_model_path().read_bytes())
    other = onnx.load(str(served))
    for prop in other.metadata_props:
        if prop.key == "actionstream.model_version":
            prop.value += "-retrained"
    with ServeProcess(log, args=["--workers", "2", "--model", str(served)]) as server:
        first = server.ready["model"]
        onnx.save(other, str(served))
        os.kill(_worker_pids(server)[0], signal.SIGKILL)
        assert server.wait(60) == 1
    log.seek(0)
    text = log.read()
    assert f"serves {first}-retrained, not {first}: the model file changed" in text, text
    assert "Traceback" not in text


def test_the_reserved_port_is_held_against_plain_listeners() -> None:
    # Between the supervisor's bind and the workers' listen (model loading: up to two
    # minutes) a plain server (SO_REUSEADDR, as gRPC's own) must not take the port.
    reserved = _reserve_port("127.0.0.1", 0)
    port = reserved.getsockname()[1]
    try:
        with socket.socket() as plain:
            plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="Address already in use"):
                plain.bind(("127.0.0.1", port))
    finally:
        reserved.close()
