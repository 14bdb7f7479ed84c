"""What a frame costs end to end: N camera streams through the real server over
loopback gRPC, against the two stages a frame needs (decode + resize, one
model step) timed bare in the same process.

    python bench/serve_throughput.py [--streams 1,4,16] [--frames 150] [--size 480]

The server is `actionstream serve` in its own process. Each stream behaves
like a camera that sends its next JPEG frame as soon as the previous one is
answered (one frame in flight per stream), so the numbers are the server's
capacity without any backlog. Prints frames/s, client-side
latency p50/p99, and the ratio of the server's time per frame to the bare
stages; needs only the service install (no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO

import cv2
import grpc
import numpy as np

from actionstream.serve_process import ServeProcess, ServeProcessError
from actionstream.service.inference.frames import FrameDecoder
from actionstream.service.inference.model import OnnxStepModel
from actionstream.training.synth import SynthConfig, render_stream
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def _camera(target: str, jpegs: list[bytes], frames: int, latencies: list[float]) -> None:
    """One closed-loop stream: send a frame, wait for its prediction, send the next."""
    answered: queue.Queue[None] = queue.Queue()
    sent = [0.0]  # when the frame in flight left

    t0_us = time.time_ns() // 1000

    def requests() -> Iterator[pb.FrameRequest]:
        for i in range(frames):
            if i:
                answered.get()
            sent[0] = time.perf_counter()
            # Capture times 100 ms apart, as a 10 fps camera's: the server resamples to the
            # model's rate by them, and this bench measures capacity, not resampling.
            frame = pb.Frame(
                encoded=jpegs[i % len(jpegs)], sequence=i + 1, timestamp_us=t0_us + i * 100_000
            )
            yield pb.FrameRequest(frame=frame)

    with grpc.insecure_channel(target) as channel:
        for _ in pb_grpc.ActionRecognitionStub(channel).StreamFrames(requests()):
            latencies.append((time.perf_counter() - sent[0]) * 1e3)
            answered.put(None)


@contextlib.contextmanager
def _serving(log: IO[str]) -> Iterator[ServeProcess]:
    """`actionstream serve`, or the exit with its own reason where it cannot start."""
    try:
        server = ServeProcess(log)
    except ServeProcessError as e:
        raise SystemExit(f"serve_throughput.py: {e}") from None
    with server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="1,4,16", help="stream counts to try")
    parser.add_argument("--frames", type=int, default=150, help="frames per stream")
    parser.add_argument("--size", type=int, default=480, help="camera frame side, pixels")
    args = parser.parse_args()
    try:
        counts = [int(s) for s in args.streams.split(",")]
    except ValueError:
        parser.error(f"--streams takes whole numbers joined by commas, got {args.streams!r}")
    if min(counts) < 1 or args.frames < 1 or args.size < 16:
        parser.error("--streams and --frames must be at least 1, and --size at least 16")

    model = OnnxStepModel.load()
    meta = model.metadata
    video, _ = render_stream(32, seed=1, cfg=SynthConfig(size=args.size))
    jpegs = [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes() for f in video]

    decoder = FrameDecoder(meta.height, meta.width, 8 << 20, 4096 * 4096)
    decode_ms = _median_ms(lambda: decoder.decode_image(jpegs[3]), 200)
    image = decoder.decode_image(jpegs[3])[np.newaxis]
    state = model.zero_state(1)
    step_ms = _median_ms(lambda: model.step(image, state), 200)
    bare_ms = decode_ms + step_ms
    print(f"model {meta.version}, {args.size}x{args.size} JPEG frames ({len(jpegs[3])} bytes)")
    print(f"bare stages: decode+resize {decode_ms:.3f} ms + model step {step_ms:.3f} ms")
    print(
        f"{'streams':>7}  {'frames/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  "
        f"{'wall ms/frame':>15}  {'/ bare stages':>13}"
    )

    # The server runs in a process of its own, as `actionstream serve`: the
    # client threads here must not share its GIL.
    with tempfile.TemporaryFile("w+") as log, _serving(log) as server:
        target = server.target
        for n in (int(s) for s in args.streams.split(",")):
            latencies: list[list[float]] = [[] for _ in range(n)]
            threads = [
                threading.Thread(target=_camera, args=(target, jpegs, args.frames, latencies[i]))
                for i in range(n)
            ]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            all_ms = np.concatenate(latencies)
            fps = len(all_ms) / wall
            p50, p99 = np.percentile(all_ms, [50, 99])
            per_frame = 1e3 / fps
            print(
                f"{n:>7}  {fps:>9.0f}  {p50:>7.2f}  {p99:>7.2f}  "
                f"{per_frame:>15.3f}  {per_frame / bare_ms:>12.2f}x"
            )


if __name__ == "__main__":
    main()
