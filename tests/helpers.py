"""Helpers for the service tests: frames, requests, and driving a stream frame by frame."""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import cv2
import grpc
import numpy as np
import pytest

from actionstream.training.synth import render_stream
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc


def render(n_frames: int, seed: int) -> np.ndarray:
    """(n, 64, 64, 3) uint8 BGR frames of a synthetic stream."""
    return render_stream(n_frames, seed)[0]


def jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return data.tobytes()


def arithmetic_jpeg(data: bytes) -> bytes:
    """The JPEG `data` re-coded with arithmetic coding, losslessly (libjpeg's jpegtran;
    `make test` installs it where it can: neither OpenCV nor Pillow writes one). Fails
    in CI and skips elsewhere when jpegtran is missing."""
    jpegtran = shutil.which("jpegtran")
    if jpegtran is None:
        if os.environ.get("CI"):
            pytest.fail("jpegtran not found (Debian's libjpeg-turbo-progs)")
        pytest.skip("needs jpegtran (Debian's libjpeg-turbo-progs)")
    done = subprocess.run([jpegtran, "-arithmetic"], input=data, capture_output=True, check=True)
    return done.stdout


def png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


# Capture times for frames that do not name one: a 10 fps camera whose clock every
# request reads, so consecutive frames of any stream are at least a model period apart
# and the server's resampling takes every one.
_camera_clock = itertools.count(1_700_000_000_000_000, 100_000)


def frame_request(
    image_bytes: bytes, sequence: int = 0, timestamp_us: int | None = None
) -> pb.FrameRequest:
    if timestamp_us is None:
        timestamp_us = next(_camera_clock)
    frame = pb.Frame(encoded=image_bytes, sequence=sequence, timestamp_us=timestamp_us)
    return pb.FrameRequest(frame=frame)


_channels: list[grpc.Channel] = []


def stub_for(port: int) -> pb_grpc.ActionRecognitionStub:
    """A stub on a channel of its own to 127.0.0.1:`port`, closed when the test ends."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    _channels.append(channel)
    return pb_grpc.ActionRecognitionStub(channel)


def close_channels() -> None:
    """Closes the channels stub_for opened (conftest, after each test)."""
    while _channels:
        _channels.pop().close()


class LiveStream:
    """One open StreamFrames call driven a frame at a time: send one, get its prediction.

    Lets a test interleave several streams exactly, or leave one open while
    others come and go.
    """

    def __init__(self, stub: pb_grpc.ActionRecognitionStub, options: pb.StreamOptions) -> None:
        self._requests: queue.Queue[pb.FrameRequest | None] = queue.Queue()
        self._requests.put(pb.FrameRequest(options=options))
        self._responses = stub.StreamFrames(iter(self._requests.get, None))

    def send(self, request: pb.FrameRequest) -> pb.Prediction:
        self._requests.put(request)
        return next(self._responses)  # type: ignore[no-any-return]

    def put(self, request: pb.FrameRequest) -> None:
        """Sends a request without waiting for its prediction."""
        self._requests.put(request)

    def close(self) -> list[pb.Prediction]:
        """Ends the request stream; returns any predictions still to come."""
        self._requests.put(None)
        return list(self._responses)

    def outcome(self) -> list[pb.Prediction]:
        """Waits, without ending the request stream, for the server to end the call."""
        return list(self._responses)

    def cancel(self) -> None:
        self._requests.put(None)
        self._responses.cancel()


def assert_matches(
    predictions: Sequence[pb.Prediction], probs: np.ndarray, labels: Sequence[str]
) -> None:
    """Each prediction lists the reference's top labels, best first, with its probabilities."""
    assert len(predictions) == len(probs)
    for t, (prediction, p) in enumerate(zip(predictions, probs, strict=True)):
        k = len(prediction.top)
        best = np.argsort(-p, kind="stable")[:k]
        assert [s.label for s in prediction.top] == [labels[i] for i in best], f"frame {t}"
        np.testing.assert_allclose(
            [s.probability for s in prediction.top], p[best], atol=1e-5, err_msg=f"frame {t}"
        )


# The sequence numbers a WatchSource of an MjpegCamera answers, its second frame thinned.
def camera_sequences(frames: int) -> list[int]:
    return [1, *range(3, frames + 1)]


class MjpegCamera:
    """An HTTP MJPEG camera on 127.0.0.1: sends each client `frames` at `fps`, as a camera
    does, then holds on, silent.

    The server stamps a camera's frames when it reads them and takes them at the model's
    rate (10 fps here): at 5 fps every frame is taken, even one read up to 125 ms late,
    but the second. FFmpeg holds the first two frames from its probe when the open
    returns; read together, the second is thinned away. So `n` frames give `n - 1`
    predictions, numbered as `camera_sequences` says.
    """

    def __init__(
        self, frames: Sequence[np.ndarray], fps: float = 5.0, sent_as: Sequence[bytes] = ()
    ) -> None:
        """`sent_as`: the bytes each part carries instead of the frames' JPEGs."""
        self._parts = [
            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
            % (len(data), data)
            for data in (sent_as or list(map(jpeg, frames)))
        ]
        self._period_s = 1.0 / fps
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._connections: list[socket.socket] = []
        self.sent = threading.Event()  # a client has been sent every frame
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/cam.mjpg"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self._connections.append(connection)
            threading.Thread(target=self._send, args=(connection,), daemon=True).start()

    def _send(self, connection: socket.socket) -> None:
        try:
            connection.recv(65536)
            connection.sendall(
                b"HTTP/1.0 200 OK\r\n"
                b"Content-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
            )
            for i, part in enumerate(self._parts):
                if i:
                    time.sleep(self._period_s)
                connection.sendall(part)
            self.sent.set()
        except OSError:  # the client went away, or the camera was closed
            return

    def close(self) -> None:
        # A close alone does not wake a thread blocked in accept(), which would then take
        # one more client; shutting the socket down does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for connection in self._connections:
            connection.close()


# `actionstream` with Ctrl-C as a terminal gives it: a shell's background job (CI's
# pytest may be one) starts with SIGINT ignored, and a child keeps that. Not through
# Popen's preexec_fn, which forks this process (gRPC servers on its threads) and runs
# Python in the child before exec: under load 6 of 48 such children aborted before
# exec, in gRPC's poller ("epoll_wait error: Bad file descriptor").
WITH_CTRL_C = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'actionstream', *sys.argv[1:]])"
)


def actionstream(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`actionstream ARGS` as a user runs it, in a process of its own; its output kept."""
    return subprocess.run(
        [sys.executable, "-m", "actionstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
