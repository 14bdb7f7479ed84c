"""`actionstream watch` as users run it, against a real server that watches real sources."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from background import BackgroundServer
from helpers import WITH_CTRL_C, MjpegCamera, camera_sequences, render

from actionstream.service.text import printable
from actionstream.training.synth import render_stream, write_video

StartServer = Callable[..., BackgroundServer]
# The servers' idle timeout, and so how long a silent camera takes to count as lost.
TIMEOUT_S = 2.0
LOST = "the source stopped sending frames after 3 predictions"
SKIPPED = (
    "skipped: {} of the source's frames (above the model's frame rate, or behind when the "
    "server was busy)"
)


def _watch(server: BackgroundServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "actionstream", "watch"),
            *("--target", f"127.0.0.1:{server.port}", *args),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def watcher(start_server: StartServer) -> BackgroundServer:
    return start_server(allow_sources=True, idle_timeout_seconds=TIMEOUT_S)


@pytest.fixture
def camera() -> Iterator[MjpegCamera]:
    """Four frames to each connection (three predictions), then silence: a camera that
    drops. At 2.5 fps, so that a frame the server reads up to 325 ms late is still taken:
    at 5 fps, one read 125 ms late on a loaded machine was thinned (see MjpegCamera)."""
    camera = MjpegCamera(list(render(4, seed=1)), fps=2.5)
    yield camera
    camera.close()


def test_a_file_is_watched_to_its_end(watcher: BackgroundServer, tmp_path: Path) -> None:
    frames, labels = render_stream(10, seed=5)
    write_video(frames, labels, tmp_path / "clip.avi", fps=10.0)
    result = _watch(watcher, "--source", str(tmp_path / "clip.avi"))
    assert (result.returncode, result.stderr) == (0, "")
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:10]] == [["frame", str(n)] for n in range(1, 11)]
    assert all(0 < float(line.split()[3]) <= 1 for line in lines[:10])  # the top label's
    assert lines[10:] == ["predictions: 10", "ended: the source ended"]
    # A 30 fps file for the 10 fps model: every third frame, the rest counted.
    frames, labels = render_stream(30, seed=6)
    write_video(frames, labels, tmp_path / "fast.avi", fps=30.0)
    result = _watch(watcher, "--source", str(tmp_path / "fast.avi"), "--quiet")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines() == [
        "predictions: 10",
        SKIPPED.format(20),
        "ended: the source ended",
    ]


def test_a_watch_in_json_lines(watcher: BackgroundServer, tmp_path: Path) -> None:
    frames, labels = render_stream(10, seed=5)
    write_video(frames, labels, tmp_path / "clip.avi", fps=10.0)
    result = _watch(watcher, "--source", str(tmp_path / "clip.avi"), "--json")
    assert (result.returncode, result.stderr) == (0, "")
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["prediction"]["sequence"] for line in lines[:-1]] == list(range(1, 11))
    assert lines[-1] == {
        "summary": {
            "frames_answered": 10,
            "reconnects": 0,
            "ended": "the source ended",
            "interrupted": False,
            "frames_skipped": 0,
        }
    }


def test_a_lost_camera_is_watched_again(watcher: BackgroundServer, camera: MjpegCamera) -> None:
    start = time.monotonic()
    result = _watch(
        watcher, "--source", camera.url, "--max-predictions", "5", "--reconnect-seconds", "20"
    )
    assert result.returncode == 0, result
    # Three predictions, lost once the camera had been silent for the server's read
    # timeout, then watched again: two more, and it stops where asked.
    assert result.stdout.splitlines()[-4:] == [
        "predictions: 5",
        SKIPPED.format(2),  # each call's second frame (see MjpegCamera)
        "watched again: 1 time(s) after the source or the server was lost (each new call "
        "started from a zero state)",
        "ended: stopped after 5 predictions, as asked",
    ]
    frames = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("frame")]
    # Each call's own frame numbers (the second frame is thinned, see MjpegCamera).
    assert frames == [str(n) for n in camera_sequences(4) + camera_sequences(4)[:2]]
    said, back = result.stderr.splitlines()
    assert said.startswith(f"actionstream watch: UNAVAILABLE: {LOST}")
    assert said.endswith("watching again for up to 20 s (a new call starts from a zero state)")
    # Said as `stream` says it: a watch that came back said nothing (a user's trial).
    assert back == "actionstream watch: watching again; the new call answers (from a zero state)"
    assert time.monotonic() - start < 30


def test_a_source_lost_before_its_first_answer_is_not_an_unreachable_server(
    watcher: BackgroundServer,
) -> None:
    # A camera sending no image: the server ended the call, saying why, and the client
    # said "the server ... is unreachable, or lost the source at once" (a user's trial).
    camera = MjpegCamera([], fps=20.0, sent_as=[b"not a jpeg at all" * 50] * 20)
    try:
        result = _watch(watcher, "--source", camera.url, "--reconnect-seconds", "0")
    finally:
        camera.close()
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr.startswith(
        "actionstream watch: the server ended the watch with UNAVAILABLE: the source stopped "
        "sending frames after 0 predictions"
    ), result.stderr


def test_a_lost_camera_ends_the_watch_when_asked_not_to_reconnect(
    watcher: BackgroundServer, camera: MjpegCamera
) -> None:
    result = _watch(watcher, "--source", camera.url, "--reconnect-seconds", "0", "--quiet")
    assert result.returncode == 1, result
    assert result.stdout.splitlines() == [
        "predictions: 3",
        SKIPPED.format(1),
        "ended: the server ended it with UNAVAILABLE",
    ]
    (said,) = result.stderr.splitlines()
    assert said.startswith(
        f"actionstream watch: the server ended the watch with UNAVAILABLE: {LOST}"
    )


def test_watching_again_gives_up_when_the_camera_stays_away(
    watcher: BackgroundServer, camera: MjpegCamera
) -> None:
    # The camera goes for good once the first call has it: the server cannot open it again
    # (NOT_FOUND), and the client stops asking after --reconnect-seconds.
    def close_once_sent() -> None:
        assert camera.sent.wait(30)
        camera.close()

    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "actionstream", "watch", "--source", camera.url),
            *("--target", f"127.0.0.1:{watcher.port}", "--reconnect-seconds", "3", "--quiet"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    close_once_sent()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert out.splitlines() == [
        "predictions: 3",
        SKIPPED.format(1),
        "ended: gave up watching again",
    ]
    lost, gave_up = err.splitlines()
    assert lost.startswith(f"actionstream watch: UNAVAILABLE: {LOST}")
    assert gave_up.startswith(
        "actionstream watch: could not watch the source again within 3 s; gave up (last: "
        "NOT_FOUND: could not open stream http://127.0.0.1:"
    )


def test_refusals_and_an_absent_server_are_one_line(
    start_server: StartServer, watcher: BackgroundServer, tmp_path: Path
) -> None:
    closed = start_server()  # WatchSource not allowed
    cases = {
        closed: ("0", "the server ended the watch with PERMISSION_DENIED: WatchSource is disabled"),
        watcher: (
            str(tmp_path / "absent.avi"),
            # The server names at most 64 characters of a source (a long one ends in "…").
            "the server ended the watch with NOT_FOUND: no such video file: "
            + printable(str(tmp_path / "absent.avi")),
        ),
    }
    for server, (source, message) in cases.items():
        result = _watch(server, "--source", source)
        assert (result.returncode, result.stdout) == (1, ""), result
        assert result.stderr.startswith(f"actionstream watch: {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1
    port = closed.port
    closed.stop()
    result = _watch(closed, "--source", "0")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"actionstream watch: the server at 127.0.0.1:{port} is unreachable"
    ), result.stderr


@pytest.mark.parametrize("times", [1, 2], ids=["once", "twice-at-once"])
@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_stops_a_watch_with_its_summary(
    watcher: BackgroundServer, camera: MjpegCamera, sig: signal.Signals, exit_code: int, times: int
) -> None:
    # Twice at once as `timeout` stops it (the process, then its group): a user's trial
    # lost the summary in 4 runs of 6, and 3 of them hung in gRPC's channel close. Where
    # the second signal lands is chance: three rounds (one in six failed here before).
    for _ in range(1 if times == 1 else 3):
        proc = subprocess.Popen(
            [
                *(sys.executable, "-c", WITH_CTRL_C, "watch", "--source", camera.url),
                *("--target", f"127.0.0.1:{watcher.port}"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for _ in range(3):
            assert proc.stdout.readline().startswith("frame ")
        for _ in range(times):  # while the server waits on the silent camera
            proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
        assert (proc.returncode, err) == (exit_code, "")
        assert out.splitlines() == ["predictions: 3", SKIPPED.format(1), "ended: interrupted"]
