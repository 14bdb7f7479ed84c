"""The `stream` client against a real server: counts, accuracy, latency, clear failures."""

from __future__ import annotations

import csv
import functools
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest
from background import BackgroundServer

from actionstream.service.client import StreamError, read_labels, run_stream, stream_source
from actionstream.service.config import StreamConfig
from actionstream.training.synth import render_stream, write_video


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    frames, labels = render_stream(30, seed=12)
    path = tmp_path_factory.mktemp("video") / "feed.avi"
    write_video(frames, labels, path, fps=10.0)
    return path


def test_stream_a_labelled_video(server: BackgroundServer, video: Path) -> None:
    labels = video.with_suffix(".csv")
    cfg = StreamConfig(
        source=str(video),
        target=f"127.0.0.1:{server.port}",
        labels=str(labels),
        realtime=False,
        quiet=True,
    )
    summary = stream_source(cfg)
    assert summary.frames_sent == summary.frames_answered == 30
    assert [p.sequence for p in summary.predictions] == list(range(1, 31))
    # Accuracy is per frame, matched by sequence number (frame i of the CSV is sequence i+1).
    truth = read_labels(labels)
    hits = sum(p.top[0].label == truth[p.sequence - 1] for p in summary.predictions)
    assert summary.accuracy == pytest.approx(hits / 30)
    assert summary.accuracy is not None and 0.0 <= summary.accuracy <= 1.0
    assert summary.p50_ms is not None and summary.p99_ms is not None
    assert 0 < summary.p50_ms <= summary.p99_ms
    assert all(len(p.top) == 3 for p in summary.predictions)


def test_run_stream_prints_predictions_and_summary(
    server: BackgroundServer, video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = StreamConfig(
        source=str(video), target=f"127.0.0.1:{server.port}", realtime=False, max_frames=5
    )
    assert run_stream(cfg) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out[:5]] == [["frame", str(i)] for i in range(1, 6)]
    assert "frames: 5 sent, 5 answered" in out
    assert not any(line.startswith("accuracy") for line in out)  # no labels given


def test_realtime_paces_at_the_source_fps(server: BackgroundServer, video: Path) -> None:
    cfg = StreamConfig(
        source=str(video), target=f"127.0.0.1:{server.port}", max_frames=6, quiet=True
    )
    start = time.perf_counter()
    assert stream_source(cfg).frames_answered == 6
    assert time.perf_counter() - start >= 0.45  # 6 frames at 10 fps: 5 gaps of 0.1 s


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_a_clear_error(
    video: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{_closed_port()}"
    assert run_stream(StreamConfig(source=str(video), target=target, realtime=False)) == 1
    err = capsys.readouterr().err
    assert f"actionstream stream: cannot reach the server at {target}" in err
    assert "Traceback" not in err


def test_unopenable_source_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing.avi"
    assert run_stream(StreamConfig(source=str(missing))) == 1
    assert f"cannot open source: no such video file: {missing}" in capsys.readouterr().err


def test_bad_labels_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([["time", "action"], ["0", "idle"]])
    with pytest.raises(StreamError, match="expected a CSV with columns frame,label"):
        read_labels(path)


def test_stream_a_video_from_an_http_url(server: BackgroundServer, video: Path) -> None:
    # A real HTTP server on loopback; OpenCV (FFmpeg) reads the URL like a network camera.
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(video.parent))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as web:
        thread = threading.Thread(target=web.serve_forever, daemon=True)
        thread.start()
        try:
            cfg = StreamConfig(
                source=f"http://127.0.0.1:{web.server_address[1]}/{video.name}",
                target=f"127.0.0.1:{server.port}",
                labels=str(video.with_suffix(".csv")),
                realtime=False,
                quiet=True,
            )
            summary = stream_source(cfg)
        finally:
            web.shutdown()
    assert summary.frames_sent == summary.frames_answered == 30
    assert summary.accuracy is not None
