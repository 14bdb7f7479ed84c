"""What checking a PNG's image data costs an honest frame: the server's decode of a
640x480 PNG with the inflation check (service/inference/png.py) against the same
decode without it, alternating, in one run.

    python bench/png_decode.py [--rounds 5] [--frames 200]

The check inflates the image data once more, bounded by the size its header gives,
before libpng decodes it: that is the whole of its cost. JPEG frames, what cameras
send, pay nothing. Prints the median ms a frame each way per round, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from actionstream.service.inference.frames import FrameDecoder
from actionstream.v1 import actionstream_pb2 as pb


def _frames(count: int) -> list[bytes]:
    """Camera-like 640x480 PNGs: a smooth scene with sensor noise, so they compress as
    such frames do (about 0.5 MB each), not as flat synthetic ones."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        scene = cv2.resize(rng.integers(0, 256, (60, 80, 3), np.uint8), (640, 480))
        noise = rng.integers(-8, 8, scene.shape)
        image = np.clip(scene.astype(np.int16) + noise + i % 7, 0, 255).astype(np.uint8)
        out.append(cv2.imencode(".png", image)[1].tobytes())
    return out


def _per_frame_ms(decode: object, frames: list[bytes]) -> float:
    times = []
    for data in frames:
        start = time.perf_counter()
        decode(data)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    if args.rounds < 1 or args.frames < 1:
        parser.error("--rounds and --frames must be at least 1")
    decoder = FrameDecoder(64, 64, 8 << 20, 3840 * 2160)
    frames = _frames(args.frames)

    def checked(data: bytes) -> None:  # as the server decodes a PNG frame
        decoder.decode(pb.Frame(encoded=data))

    def unchecked(data: bytes) -> None:  # the same without the check
        decoder.fit(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))

    print(f"{args.frames} PNGs of 640x480, {np.mean([len(f) for f in frames]) / 1e3:.0f} KB each")
    print("| round | checked ms | unchecked ms | ratio |\n| --- | --- | --- | --- |")
    for i in range(args.rounds):
        # Alternating which goes first, so that neither always meets warm caches.
        pair = (checked, unchecked) if i % 2 == 0 else (unchecked, checked)
        ms = {f: _per_frame_ms(f, frames) for f in pair}
        ratio = ms[checked] / ms[unchecked]
        print(f"| {i + 1} | {ms[checked]:.2f} | {ms[unchecked]:.2f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
