"""10,000 streams opened and closed, half of them by clients that vanish: nothing stays behind.

The server runs as `actionstream serve` in a process of its own, so its
resident memory and open file descriptors are its own, read from /proc.
Half the streams end properly (the client half-closes after its answer);
the other half belong to client processes that exit without ending their
calls, as a camera that loses power would.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from helpers import png, render

from actionstream.serve_process import ServeProcess
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow

STREAMS = 10_000
VANISHING_PROCESSES = 10  # each holds STREAMS // 2 // VANISHING_PROCESSES streams, then exits

# A client process that opens N streams, gets one prediction on each, and exits with
# every call still open: the kernel closes its sockets, nobody ends a call.
_VANISH = """
import asyncio, os, sys
import grpc
from actionstream.v1 import actionstream_pb2 as pb, actionstream_pb2_grpc as pb_grpc
target, n, image = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
async def main():
    channel = grpc.aio.insecure_channel(target)
    stub = pb_grpc.ActionRecognitionStub(channel)
    async def one(i):
        call = stub.StreamFrames()
        frame = pb.Frame(encoded=image, timestamp_us=1_700_000_000_000_000)
        await call.write(pb.FrameRequest(frame=frame))
        await call.read()
        return call
    calls = await asyncio.gather(*(one(i) for i in range(n)))
    os._exit(0)
asyncio.run(main())
"""


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def _closing_streams(target: str, image: bytes, n: int) -> None:
    """`n` streams, 100 at a time, each: one frame, its prediction, a proper close."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)

        async def one() -> None:
            call = stub.StreamFrames()
            frame = pb.Frame(encoded=image, timestamp_us=1_700_000_000_000_000)
            await call.write(pb.FrameRequest(frame=frame))
            await call.read()
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF

        for start in range(0, n, 100):
            await asyncio.gather(*(one() for _ in range(min(100, n - start))))


def _wait_until_idle(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _metric(port, "actionstream_active_streams") != 0:
        assert time.monotonic() < deadline, "streams still active"
        time.sleep(0.2)


def test_ten_thousand_streams_leave_nothing_behind(tmp_path: Path) -> None:
    image = png(render(1, seed=50)[0])
    image_file = tmp_path / "frame.png"
    image_file.write_bytes(image)
    with (
        tempfile.TemporaryFile("w+") as log,
        ServeProcess(log, args=["--max-streams", "1000"]) as server,
    ):
        # Warm up: first allocations, gRPC's pools and the first connections.
        asyncio.run(_closing_streams(server.target, image, 500))
        _wait_until_idle(server.metrics_port)
        rss0, fds0 = _rss_kb(server.pid), _fds(server.pid)

        vanishing = STREAMS // 2 // VANISHING_PROCESSES
        for _ in range(VANISHING_PROCESSES):
            subprocess.run(
                [sys.executable, "-c", _VANISH, server.target, str(vanishing), str(image_file)],
                check=True,
                timeout=120,
            )
            asyncio.run(_closing_streams(server.target, image, vanishing))
        _wait_until_idle(server.metrics_port)
        rss1, fds1 = _rss_kb(server.pid), _fds(server.pid)
        ended = _metric(server.metrics_port, 'actionstream_streams_ended_total{reason="completed"}')
        cancelled = _metric(
            server.metrics_port, 'actionstream_streams_ended_total{reason="cancelled"}'
        )

    print(
        f"\n{STREAMS} streams: RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB, "
        f"open fds {fds0} -> {fds1}, ended completed {ended:.0f}, cancelled {cancelled:.0f}"
    )
    # grpc.aio ends the input of a call whose client's connection closed as it would a
    # half-close; whether the handler is cancelled before it returns is a race, so a
    # vanished client is counted as completed or as cancelled. Every stream is counted.
    assert ended + cancelled == 500 + STREAMS
    assert ended >= 500 + STREAMS // 2
    assert fds1 <= fds0 + 2
    assert rss1 - rss0 < 32 * 1024, f"RSS grew by {(rss1 - rss0) / 1024:.1f} MiB"
