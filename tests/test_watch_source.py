"""WatchSource against sources that misbehave: a real server on 127.0.0.1:0, real gRPC,
real OpenCV and FFmpeg. The hanging source is a socket on 127.0.0.1 that accepts
connections (in the kernel's backlog) and never answers; the camera is a small HTTP MJPEG
server on 127.0.0.1 that sends a few frames and then falls silent.

Not tested here: a frame that grows past max_frame_pixels after the source opened. OpenCV's
FFmpeg backend scales every frame to the size the stream had when it opened, so such a
frame reaches the server's own check at that size (FFmpeg has decoded it at full size).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from background import BackgroundServer
from helpers import LiveStream, MjpegCamera, camera_sequences, frame_request, jpeg, png, render

from actionstream.service.clients.scrape import scrape
from actionstream.service.trailers import REASON
from actionstream.training.synth import render_stream, write_video
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

StartServer = Callable[..., BackgroundServer]
# The idle timeout of these servers, and so their sources' open and read timeout.
TIMEOUT_S = 2.0


@dataclass
class Outcome:
    """How one WatchSource call ended, and when."""

    predictions: list[pb.Prediction] = field(default_factory=list)
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    seconds: float = 0.0
    trailer: dict[str, str] = field(default_factory=dict)


def watch(server: BackgroundServer, source: str, deadline_s: float = 10.0) -> Outcome:
    outcome = Outcome()
    start = time.monotonic()
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        call = stub.WatchSource(pb.SourceRequest(source=source), timeout=deadline_s)
        try:
            for p in call:
                outcome.predictions.append(p)
        except grpc.RpcError as e:
            outcome.code, outcome.details = e.code(), e.details() or ""
        outcome.trailer = {k: v for k, v in call.trailing_metadata() or () if isinstance(v, str)}
    outcome.seconds = time.monotonic() - start
    return outcome


def _open_and_cancel(
    stub: pb_grpc.ActionRecognitionStub, source: str, times: int, after_s: float
) -> None:
    """Watches `source` and cancels the call `after_s` later, `times` times over."""
    for _ in range(times):
        call = stub.WatchSource(pb.SourceRequest(source=source), timeout=30)
        time.sleep(after_s)
        call.cancel()


def metrics(server: BackgroundServer) -> dict[str, float]:
    assert server.metrics_port is not None
    return scrape(server.metrics_port)


def source_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("source")]


@pytest.fixture
def watcher(start_server: StartServer) -> BackgroundServer:
    return start_server(allow_sources=True, metrics_port=0, idle_timeout_seconds=TIMEOUT_S)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    frames, labels = render_stream(10, seed=5)
    write_video(frames, labels, tmp_path / "clip.avi", fps=10.0)
    return tmp_path / "clip.avi"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """An http:// URL on 127.0.0.1 that takes connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/cam.mjpg"
    listener.close()


@pytest.fixture
def closed_address() -> str:
    """host:port on 127.0.0.1 where nothing listens (a port just let go)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.fixture
def make_camera() -> Iterator[Callable[[Sequence[np.ndarray]], MjpegCamera]]:
    cameras: list[MjpegCamera] = []

    def make(frames: Sequence[np.ndarray]) -> MjpegCamera:
        cameras.append(MjpegCamera(frames))
        return cameras[-1]

    yield make
    for camera in cameras:
        camera.close()


@pytest.mark.parametrize(
    ("source", "code"),
    [
        # A digit to str.isdigit(), not to int().
        pytest.param("²", grpc.StatusCode.NOT_FOUND, id="superscript"),
        # Over a C long, for OpenCV; over int()'s 4300 digits.
        pytest.param("9" * 20, grpc.StatusCode.INVALID_ARGUMENT, id="20-digits"),
        pytest.param("9" * 5000, grpc.StatusCode.INVALID_ARGUMENT, id="5000-digits"),
        # A name past the file system's limit names no file.
        pytest.param("/" + "a" * 300, grpc.StatusCode.NOT_FOUND, id="ENAMETOOLONG"),
        pytest.param("/" + "a" * 5000, grpc.StatusCode.INVALID_ARGUMENT, id="5000-path"),
        pytest.param("/" + "A" * 1_000_000, grpc.StatusCode.INVALID_ARGUMENT, id="1M-path"),
        pytest.param(
            "/x\n2026-01-01 00:00:00,000 INFO forged line",
            grpc.StatusCode.INVALID_ARGUMENT,
            id="newline",
        ),
        # All of it quoted, the status would exceed gRPC's 16 KiB metadata limit.
        pytest.param(
            "http://CLOSED/" + "a" * 20_000, grpc.StatusCode.INVALID_ARGUMENT, id="20000-url"
        ),
        pytest.param("http://CLOSED/" + "a" * 4000, grpc.StatusCode.NOT_FOUND, id="4000-url"),
    ],
)
def test_odd_sources_end_with_a_clear_status_and_a_short_log(
    watcher: BackgroundServer,
    caplog: pytest.LogCaptureFixture,
    closed_address: str,
    source: str,
    code: grpc.StatusCode,
) -> None:
    caplog.set_level(logging.INFO)
    outcome = watch(watcher, source.replace("CLOSED", closed_address))
    assert (outcome.code, outcome.predictions) == (code, [])
    assert len(outcome.details) < 300  # the source quoted cut short, escaped
    assert "\n" not in outcome.details
    m = metrics(watcher)
    assert m["actionstream_streams_ended_total{reason=invalid_source}"] == 1
    assert m.get("actionstream_streams_ended_total{reason=error}", 0) == 0
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []
    # Every line that quotes the client is cut to 64 characters (plus the server's words).
    assert all(len(r.getMessage()) < 300 for r in caplog.records)
    assert not any(line.startswith("2026-01-01") for line in caplog.text.splitlines())


def test_a_server_without_sources_refuses_and_counts_it_as_its_reason_says(
    start_server: StartServer, video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = start_server(metrics_port=0)
    outcome = watch(server, str(video))
    assert (outcome.code, outcome.predictions) == (grpc.StatusCode.PERMISSION_DENIED, [])
    assert outcome.details.startswith("WatchSource is disabled on this server")
    # Its reason alone: no stream was opened, so there are no frames to count.
    assert outcome.trailer == {REASON: "invalid_source"}
    # Logged as the allowlist's refusals are, with what the client was told.
    assert (
        f"stream {video} refused (invalid_source: PERMISSION_DENIED: WatchSource is "
        "disabled on this server" in caplog.text
    ), caplog.text
    # The trailer's reason is the label the ended-streams counter counts it under.
    m = metrics(server)
    assert m["actionstream_streams_ended_total{reason=invalid_source}"] == 1
    assert m["actionstream_rpc_errors_total{code=PERMISSION_DENIED,method=WatchSource}"] == 1
    assert m["actionstream_active_streams"] == 0


def test_local_sources_other_than_regular_files_are_refused(
    watcher: BackgroundServer, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    try:
        # Opened, a FIFO with no writer would block OpenCV in the kernel for good.
        outcome = watch(watcher, str(fifo), deadline_s=5)
        assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a regular file" in outcome.details
        # The same, reached through FFmpeg's own protocols.
        for url in [f"file://{fifo}", f"cache:file://{fifo}"]:
            outcome = watch(watcher, url, deadline_s=5)
            assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "by path" in outcome.details
    finally:
        # A reader blocked on the FIFO (without the check) is let go.
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_hanging_url_ends_at_the_idle_timeout_and_frees_its_place(
    start_server: StartServer, silent_url: str, video: Path
) -> None:
    server = start_server(
        allow_sources=True, metrics_port=0, idle_timeout_seconds=TIMEOUT_S, max_streams=1
    )
    outcome = watch(server, silent_url)
    assert outcome.code == grpc.StatusCode.NOT_FOUND
    assert f"no answer within {TIMEOUT_S:g} s" in outcome.details
    assert outcome.seconds < TIMEOUT_S + 1.5
    assert metrics(server)["actionstream_active_streams"] == 0
    assert len(watch(server, str(video)).predictions) == 10


def test_cancelled_hanging_opens_do_not_hold_up_a_file(
    start_server: StartServer, silent_url: str, video: Path
) -> None:
    # One place only: a cancelled call that kept its place would refuse the file outright.
    server = start_server(allow_sources=True, idle_timeout_seconds=TIMEOUT_S, max_streams=1)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        _open_and_cancel(stub, silent_url, times=2, after_s=0.3)
        start = time.monotonic()
        first = next(stub.WatchSource(pb.SourceRequest(source=str(video)), timeout=10))
    # The first hanging open holds FFmpeg's open lock to its timeout; the second, cancelled
    # while it waited its turn, never started.
    assert first.sequence == 1
    assert time.monotonic() - start < TIMEOUT_S + 1.0


def test_cancelled_opens_leave_at_most_one_thread_behind(
    watcher: BackgroundServer, silent_url: str
) -> None:
    before = len(source_threads())
    with grpc.insecure_channel(f"127.0.0.1:{watcher.port}") as channel:
        _open_and_cancel(pb_grpc.ActionRecognitionStub(channel), silent_url, 20, after_s=0.1)
    time.sleep(0.5)
    # The one open in flight, on the server's opening thread, runs to its timeout.
    assert len(source_threads()) - before <= 1
    assert metrics(watcher)["actionstream_active_streams"] == 0


def test_a_camera_that_stops_is_lost_while_a_file_that_ends_is_done(
    watcher: BackgroundServer,
    video: Path,
    tmp_path: Path,
    make_camera: Callable[[Sequence[np.ndarray]], MjpegCamera],
) -> None:
    # A client has to tell a dropped camera (worth calling again) from a finished file.
    finished = watch(watcher, str(video))
    assert (len(finished.predictions), finished.code) == (10, grpc.StatusCode.OK)
    # A file with no frame count to report (raw MJPEG: JPEGs back to back) is a file too.
    # It has no timeline either: FFmpeg reads it at 25 fps, so 4 frames are 2 at 10 fps.
    raw = tmp_path / "clip.mjpeg"
    raw.write_bytes(b"".join(jpeg(image) for image in render(4, seed=2)))
    finished = watch(watcher, str(raw))
    assert (len(finished.predictions), finished.code) == (2, grpc.StatusCode.OK)
    camera = make_camera(list(render(4, seed=1)))  # 3 predictions
    lost = watch(watcher, camera.url)
    assert (len(lost.predictions), lost.code) == (3, grpc.StatusCode.UNAVAILABLE)
    assert lost.details.startswith("the source stopped sending frames after 3 predictions")
    # A camera's frames are taken at the model's rate by when they were read (see
    # MjpegCamera for the second one).
    assert [p.sequence for p in lost.predictions] == camera_sequences(4)
    # What was skipped after its last answer is told as a file's is (none here).
    assert lost.trailer["actionstream-skipped-frames"] == "0"
    m = metrics(watcher)
    assert m["actionstream_streams_ended_total{reason=completed}"] == 2
    assert m["actionstream_streams_ended_total{reason=source_lost}"] == 1
    assert m["actionstream_rpc_errors_total{code=UNAVAILABLE,method=WatchSource}"] == 1
    assert m["actionstream_active_streams"] == 0


def test_reads_that_outlive_their_calls_are_bounded(
    start_server: StartServer, make_camera: Callable[[Sequence[np.ndarray]], MjpegCamera]
) -> None:
    # max_streams 1: at most 2 threads for sources, the live call's and one left over.
    read_timeout_s = 4.0  # ample time for the calls below, while the first read lingers
    server = start_server(allow_sources=True, idle_timeout_seconds=read_timeout_s, max_streams=1)
    camera = make_camera(list(render(4, seed=1)))  # 3 predictions

    def three_frames_then_cancel(stub: pb_grpc.ActionRecognitionStub) -> None:
        call = stub.WatchSource(pb.SourceRequest(source=camera.url), timeout=30)
        assert len([next(call) for _ in range(3)]) == 3
        time.sleep(0.3)  # the server now waits in OpenCV for a fifth frame
        call.cancel()

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        start = time.monotonic()
        three_frames_then_cancel(stub)
        three_frames_then_cancel(stub)
        refused = watch(server, camera.url)
        assert refused.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "threads busy with sources" in refused.details
        assert time.monotonic() - start < read_timeout_s  # the first read still lingered
        time.sleep(read_timeout_s + 0.5)  # the reads left over time out
        three_frames_then_cancel(stub)


def test_a_file_over_max_frame_pixels_is_refused_before_a_frame_is_read(
    start_server: StartServer, video: Path
) -> None:
    server = start_server(allow_sources=True, metrics_port=0, max_frame_pixels=64 * 64 - 1)
    outcome = watch(server, str(video))
    assert (outcome.code, outcome.predictions) == (grpc.StatusCode.INVALID_ARGUMENT, [])
    assert "has frames of 64x64 = 4096 pixels" in outcome.details  # as the file reports
    assert "max_frame_pixels" in outcome.details
    assert metrics(server)["actionstream_frames_received_total"] == 0


def test_a_watcher_that_stops_reading_is_ended_and_freed(
    watcher: BackgroundServer, tmp_path: Path
) -> None:
    # As for StreamFrames: without BDP probing the client's window stays at 64 KB, so a
    # client that reads nothing stalls the server's writes after a few hundred predictions.
    import cv2

    path = tmp_path / "long.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (32, 32))
    for i in range(3000):
        out.write(np.full((32, 32, 3), i % 256, np.uint8))
    out.release()
    channel = grpc.insecure_channel(
        f"127.0.0.1:{watcher.port}", options=[("grpc.http2.bdp_probe", 0)]
    )
    # Unread until the server ends it; the deadline only keeps a regression from hanging.
    call = pb_grpc.ActionRecognitionStub(channel).WatchSource(
        pb.SourceRequest(source=str(path)), timeout=90
    )
    try:
        deadline = time.monotonic() + 60
        key = "actionstream_streams_ended_total{reason=not_reading}"
        while metrics(watcher).get(key, 0) < 1:
            assert time.monotonic() < deadline, metrics(watcher)
            time.sleep(0.2)
        assert metrics(watcher)["actionstream_active_streams"] == 0
        assert metrics(watcher)["actionstream_frames_processed_total"] < 3000
        # Reading again, it gets what gRPC held for it, then the status (it waited forever).
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:
                pass
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert ended.value.details().startswith("took no prediction for")
    finally:
        call.cancel()
        channel.close()


def test_an_allowlist_opens_what_it_names_and_refuses_the_rest(
    request: pytest.FixtureRequest,
    start_server: StartServer,
    tmp_path: Path,
    make_camera: Callable[[Sequence[np.ndarray]], MjpegCamera],
    closed_address: str,
) -> None:
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    short = Path(tempfile.mkdtemp(prefix="as-"))
    request.addfinalizer(lambda: shutil.rmtree(short))
    allowed.mkdir()
    elsewhere.mkdir()
    frames, labels = render_stream(4, seed=5)
    for folder in (allowed, elsewhere):
        write_video(frames, labels, folder / "clip.avi", fps=10.0)
    (allowed / "link.avi").symlink_to(elsewhere / "clip.avi")
    # FFmpeg would follow it out of the folder (a tester's read the video elsewhere).
    (allowed / "list.m3u8").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{elsewhere / 'clip.avi'}\n"
    )
    # Numbered images, and a regular file named as FFmpeg's image2 pattern for them: the
    # demuxer would read img0.jpg, img1.jpg, ... (which links could lead anywhere).
    for i, image in enumerate(render(3, seed=2)):
        (allowed / f"img{i}.jpg").write_bytes(jpeg(image))
    (allowed / "img%d.jpg").write_bytes(jpeg(render(1, seed=2)[0]))
    camera = make_camera(list(render(4, seed=1)))  # 3 predictions
    port = camera.url.split(":")[2].split("/")[0]
    server = start_server(
        allow_sources=True,
        metrics_port=0,
        idle_timeout_seconds=TIMEOUT_S,
        source_allowlist=(
            f"{allowed}, {short}, http://127.0.0.1:{port}/cam.mjpg, tcp://{closed_address}"
        ),
    )
    assert len(watch(server, str(allowed / "clip.avi")).predictions) == 4
    # Three predictions, then the camera falls silent and the read times out.
    lost = watch(server, camera.url)
    assert (len(lost.predictions), lost.code) == (3, grpc.StatusCode.UNAVAILABLE)
    refused = {
        "a file elsewhere": str(elsewhere / "clip.avi"),
        "a link out of the folder": str(allowed / "link.avi"),
        "a path that climbs out": f"{allowed}/../elsewhere/clip.avi",
        "another port": f"http://{closed_address}/cam.mjpg",
        "another path": camera.url.replace("/cam.mjpg", "/cam.mjpgx"),
        "a path that climbs out of the prefix": camera.url + "/%2e%2e/admin",
        "a camera": "0",
        "a playlist": str(allowed / "list.m3u8"),
        "options that make a listener": f"tcp://{closed_address}?listen=1",
    }
    for what, source in refused.items():
        outcome = watch(server, source)
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (what, outcome)
        assert "allowlist" in outcome.details, what
        assert str(allowed) not in outcome.details  # the list itself is not told
    # A link in a folder is opened where it leads, and named as the client named it (a
    # folder with a short name, as statuses quote a source cut to 64 characters).
    (short / "archive").mkdir()
    (short / "now.avi").symlink_to(short / "archive" / "gone.avi")
    outcome = watch(server, str(short / "now.avi"))
    assert (outcome.code, outcome.details) == (
        grpc.StatusCode.NOT_FOUND,
        f"no such video file: {short / 'now.avi'}",
    )
    # Only video containers and camera streams: no image2, hls, concat, ...
    outcome = watch(server, str(allowed / "img%d.jpg"))
    assert (outcome.code, outcome.predictions) == (grpc.StatusCode.INVALID_ARGUMENT, [])
    assert "cannot read" in outcome.details
    # A NUL would end FFmpeg's string early; os.path.realpath raises on it.
    outcome = watch(server, f"{allowed}/clip.avi\x00x")
    assert outcome.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "control character" in outcome.details
    # A name past the file system's 255 bytes names no file (it was refused as a file
    # that "changed as it was opened"); an empty source is no source at all.
    outcome = watch(server, f"{allowed}/{'a' * 300}.avi")
    assert outcome.code == grpc.StatusCode.NOT_FOUND, outcome
    assert outcome.details.startswith("no such video file: ")
    outcome = watch(server, "")
    assert (outcome.code, outcome.details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "source is empty; give a camera index, a video file or a URL",
    )
    m = metrics(server)
    assert m["actionstream_streams_ended_total{reason=invalid_source}"] == len(refused) + 5
    assert m["actionstream_streams_ended_total{reason=source_lost}"] == 1
    assert m["actionstream_active_streams"] == 0


class RtspCamera:
    """An RTSP server on 127.0.0.1 that describes one MJPEG track, notes each SETUP's
    Transport, and then sends nothing."""

    SDP = (
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n"
        "m=video 0 RTP/AVP 26\r\na=control:track0\r\n"
    )

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.transports: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                connection, _ = self._listener.accept()
                threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        pending = b""
        with connection, contextlib.suppress(OSError):
            while data := connection.recv(65536):
                pending += data
                while b"\r\n\r\n" in pending:
                    request, pending = pending.split(b"\r\n\r\n", 1)
                    lines = request.decode().split("\r\n")
                    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                    method, body = lines[0].split(" ")[0], ""
                    extra = "Session: 1\r\n"
                    if method == "DESCRIBE":
                        body = self.SDP
                        extra = "Content-Type: application/sdp\r\n"
                    elif method == "SETUP":
                        self.transports.append(headers["Transport"])
                        extra += f"Transport: {headers['Transport']};server_port=9-10\r\n"
                    connection.sendall(
                        f"RTSP/1.0 200 OK\r\nCSeq: {headers.get('CSeq', '1')}\r\n{extra}"
                        f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
                    )

    def close(self) -> None:
        self._listener.close()


def test_rtsp_under_an_allowlist_stays_on_tcp(start_server: StartServer, tmp_path: Path) -> None:
    # Over UDP, FFmpeg takes RTP from any sender and sends to the ports a SETUP answer
    # names: under a list the server asks for RTP inside the RTSP connection, as OpenCV
    # does on its own when no FFmpeg options are set.
    camera = RtspCamera()
    try:
        server = start_server(
            allow_sources=True,
            idle_timeout_seconds=TIMEOUT_S,
            source_allowlist=f"{tmp_path}, rtsp://127.0.0.1:{camera.port}/live",
        )
        outcome = watch(server, f"rtsp://127.0.0.1:{camera.port}/live/cam")
    finally:
        camera.close()
    assert outcome.predictions == []  # it never sends a frame
    assert camera.transports, "no SETUP reached the camera"
    assert all(t.startswith("RTP/AVP/TCP") for t in camera.transports), camera.transports


def test_a_watch_turned_away_is_logged_with_what_it_was_told(
    start_server: StartServer, tmp_path: Path, video: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An operator paged for a full server, or asked why a camera is not watched, finds it
    # in the log; the client's counts get their trailer as a stream's do.
    caplog.set_level("INFO")
    server = start_server(allow_sources=True, metrics_port=0, max_streams=1)
    missing = watch(server, str(tmp_path / "gone.avi"))
    assert missing.code == grpc.StatusCode.NOT_FOUND
    assert missing.trailer["actionstream-skipped-frames"] == "0"
    assert "ended (invalid_source: NOT_FOUND: no such video file: " in caplog.text
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        holder = LiveStream(stub, pb.StreamOptions(stream_name="holder"))
        holder.send(frame_request(png(render(1, seed=3)[0])))
        full = watch(server, str(video))
        holder.close()
    assert full.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.trailer["actionstream-skipped-frames"] == "0"
    assert "refused (refused: RESOURCE_EXHAUSTED: the server is at its limit" in caplog.text
