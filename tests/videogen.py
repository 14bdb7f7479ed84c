"""Labelled videos made here the way a user's would be, independent of training/synth.py.

A textured disc crosses a cluttered background; the class is the direction
it travels, so no single frame tells the classes apart. Written with OpenCV
in the containers users have (MJPG .avi, mp4v .mp4), at frame rates other
than the model's, and at a size other than its input.
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import cv2
import numpy as np

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
FLASHES = {"flash_once": 1, "flash_twice": 2}


def motion_clip(
    direction: str, seconds: float, fps: float, size: tuple[int, int], seed: int
) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR: a disc moving in `direction` over clutter."""
    rng = np.random.default_rng(seed)
    w, h = size
    background = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    dx, dy = DIRECTIONS[direction]
    speed = rng.uniform(0.35, 0.6) * min(w, h) / seconds  # pixels per second
    x, y = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    x -= dx * speed * seconds / 2
    y -= dy * speed * seconds / 2
    colour = tuple(int(c) for c in rng.integers(120, 256, 3))
    radius = max(3, int(min(w, h) * rng.uniform(0.08, 0.14)))
    frames = []
    for t in np.arange(0, seconds, 1 / fps):
        frame = background.copy()
        centre = (int(x + dx * speed * t), int(y + dy * speed * t))
        cv2.circle(frame, centre, radius, colour, -1)
        frames.append(frame)
    return np.stack(frames)


def flash_clip(
    flashes: int, seconds: float, fps: float, size: tuple[int, int], seed: int
) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR: a spot lights up `flashes` times over clutter.

    One flash or two: the same frames make up both, only how many tells them
    apart, so the recurrent state has to count.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    background = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    n = round(seconds * fps)
    length = max(2, n // 6)
    starts = sorted(rng.choice(np.arange(1, n - length, length + 1), flashes, replace=False))
    lit = np.zeros(n, bool)
    for s in starts:
        lit[s : s + length] = True
    centre = (int(rng.uniform(0.25, 0.75) * w), int(rng.uniform(0.25, 0.75) * h))
    radius = max(3, int(min(w, h) * rng.uniform(0.1, 0.16)))
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    frames = np.repeat(background[None], n, axis=0)
    for t in np.flatnonzero(lit):
        cv2.circle(frames[t], centre, radius, colour, -1)
    return frames


def write(frames: np.ndarray, path: Path, fps: float) -> None:
    fourcc = "MJPG" if path.suffix == ".avi" else "mp4v"
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (w, h))
    assert writer.isOpened(), path
    for frame in frames:
        writer.write(frame)
    writer.release()


def variable_rate(path: Path, fast: int, speed_up: float, slow_down: float) -> None:
    """Makes an .mp4 `write` made play at a variable frame rate: its first `fast` frames
    last 1/`speed_up` of their time, the rest `slow_down` times it. OpenCV writes no such
    file; this rewrites the sample times (the `stts` box), which lies in the `moov` box
    after the frames, so no frame moves."""
    data = path.read_bytes()

    def rebuilt(start: int, end: int) -> bytes:
        out = b""
        i = start
        while i < end:
            size, kind = struct.unpack(">I4s", data[i : i + 8])
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
                inner = rebuilt(i + 8, i + size)
                out += struct.pack(">I4s", len(inner) + 8, kind) + inner
            elif kind == b"stts":
                (count, delta) = struct.unpack(">II", data[i + 16 : i + 24])
                assert struct.unpack(">I", data[i + 12 : i + 16])[0] == 1, "one rate already"
                runs = ((fast, round(delta / speed_up)), (count - fast, round(delta * slow_down)))
                body = data[i + 8 : i + 12] + struct.pack(">I", 2)
                body += b"".join(struct.pack(">II", n, d) for n, d in runs)
                out += struct.pack(">I4s", len(body) + 8, b"stts") + body
            else:
                out += data[i : i + size]
            i += size
        return out

    path.write_bytes(rebuilt(0, len(data)))


def class_folders(
    root: Path,
    labels: tuple[str, ...],
    per_class: int,
    seconds: float = 1.5,
    fps: float = 15.0,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
) -> Path:
    """root/<label>/<n>.avi|.mp4, alternating containers; returns root."""
    for k, label in enumerate(labels):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".avi" if i % 2 else ".mp4"
            clip = (
                flash_clip(FLASHES[label], seconds, fps, size, seed + 1000 * k + i)
                if label in FLASHES
                else motion_clip(label, seconds, fps, size, seed + 1000 * k + i)
            )
            write(clip, folder / f"{label}_{i:03d}{suffix}", fps)
    return root


def labelled_video(
    path: Path,
    labels: tuple[str, ...],
    per_label: int,
    seed: int,
    seconds: float = 1.5,
    fps: float = 10.0,
    size: tuple[int, int] = (96, 72),
) -> Path:
    """One untrimmed video of clips in a shuffled order, and its frame,label CSV beside it."""
    rng = np.random.default_rng(seed)
    order = [labels[i] for i in rng.permutation(np.repeat(np.arange(len(labels)), per_label))]
    frames, truth = [], []
    for i, label in enumerate(order):
        clip = (
            flash_clip(FLASHES[label], seconds, fps, size, seed + i)
            if label in FLASHES
            else motion_clip(label, seconds, fps, size, seed + i)
        )
        frames.append(clip)
        truth += [label] * len(clip)
    write(np.concatenate(frames), path, fps)
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["frame", "label"])
        out.writerows(enumerate(truth))
    return csv_path


def main(argv: list[str] | None = None) -> None:
    """The six-class data set the README measures on, written under OUT."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python tests/videogen.py",
        description="Writes labelled videos, one folder per class (left, right, up, down, "
        "flash_once, flash_twice), under OUT, and a labelled video of unseen clips beside "
        "it (OUT-unseen.mp4, with its per-frame labels in OUT-unseen.csv): the data set "
        "the README's measurements on videos were made on.",
    )
    parser.add_argument("out", type=Path, metavar="OUT", help="the folder to write")
    parser.add_argument(
        "per_class",
        type=int,
        nargs="?",
        default=100,
        metavar="PER_CLASS",
        help="videos of each class (default: 100)",
    )
    args = parser.parse_args(argv)
    if args.per_class < 1:
        parser.error(f"PER_CLASS must be at least 1, got {args.per_class}")
    out: Path = args.out
    labels = ("left", "right", "up", "down", "flash_once", "flash_twice")
    class_folders(out, labels, args.per_class, seconds=2.0, fps=12.0, size=(160, 120), seed=11)
    unseen = out.with_name(out.name + "-unseen.mp4")
    labelled_video(unseen, labels, 4, seed=70_000, seconds=2.0, fps=12.0, size=(160, 120))
    print(f"wrote {args.per_class} videos of each of {', '.join(labels)} under {out}, and {unseen}")


if __name__ == "__main__":
    main()
