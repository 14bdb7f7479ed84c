"""Procedural action videos whose classes only time can tell apart.

One asymmetric shape lies on a textured background. Its position, angle and
size are drawn from the same distribution whatever it is doing, so a single
frame says nothing about the class: only the change between frames does.
Positions wrap around the frame edges and sizes wrap around their range, so
the distribution stays the same while an action runs.

Needs numpy and OpenCV only (no torch), so the service's demo can render its
own labelled feed.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LABELS: tuple[str, ...] = (
    "idle",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "rotate_cw",
    "rotate_ccw",
    "grow",
    "shrink",
)
BACKGROUND_LABEL = "idle"

# The shape, in units of its own size: an arrow-like pentagon with no rotational
# or mirror symmetry, so that turning it is always visible.
_SHAPE = np.array([[-0.9, -0.5], [0.5, -0.6], [1.0, 0.1], [0.2, 0.7], [-0.6, 0.4]])

_MIN_SCALE, _MAX_SCALE = 0.10, 0.24  # shape radius as a fraction of the frame side


@dataclass(frozen=True)
class SynthConfig:
    """How the synthetic world looks and moves; sizes are fractions of the frame."""

    size: int = 64
    fps: float = 10.0
    min_segment_s: float = 2.0
    max_segment_s: float = 4.0
    speed: tuple[float, float] = (0.025, 0.05)  # frame sides per frame
    spin_deg: tuple[float, float] = (8.0, 18.0)  # degrees per frame
    zoom: tuple[float, float] = (0.03, 0.06)  # log-size change per frame
    # Std of per-frame pixel noise in grey levels, drawn per scene: a camera
    # downscaled to the model's input is far less noisy than one at that size.
    noise: tuple[float, float] = (1.0, 8.0)


@dataclass
class _Pose:
    x: float  # centre, fractions of the frame side
    y: float
    angle: float  # degrees, image coordinates (y down): positive is clockwise
    log_scale: float


@dataclass(frozen=True)
class _Look:
    colour: tuple[int, int, int]
    background: np.ndarray  # (S, S, 3) uint8
    noise: float


def _random_background(rng: np.random.Generator, size: int) -> np.ndarray:
    # A smooth colour gradient plus blurred blobs: texture that does not move.
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = rng.uniform(20, 110, 3)
    slope = rng.uniform(-40, 40, (2, 3))
    img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
    blobs = rng.normal(0, 25, (8, 8, 3)).astype(np.float32)  # same texture scale at any size
    img = img + cv2.resize(blobs, (size, size), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0, 255).astype(np.uint8)


def _random_look(rng: np.random.Generator, cfg: SynthConfig) -> _Look:
    # Bright, saturated shapes on a darker background, so the shape is always visible.
    colour = rng.uniform(140, 255, 3)
    colour[rng.integers(3)] = rng.uniform(0, 90)
    background = _random_background(rng, cfg.size)
    b, g, r = (int(c) for c in colour)
    return _Look((b, g, r), background, float(rng.uniform(*cfg.noise)))


def _random_pose(rng: np.random.Generator) -> _Pose:
    return _Pose(
        x=rng.uniform(0, 1),
        y=rng.uniform(0, 1),
        angle=rng.uniform(0, 360),
        log_scale=rng.uniform(math.log(_MIN_SCALE), math.log(_MAX_SCALE)),
    )


def _draw(pose: _Pose, look: _Look, rng: np.random.Generator, cfg: SynthConfig) -> np.ndarray:
    size = cfg.size
    img = look.background.copy()
    theta = math.radians(pose.angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    radius = math.exp(pose.log_scale) * size
    pts = _SHAPE @ rot.T * radius
    # Draw the copies that straddle an edge, so the shape wraps around the frame.
    shift = 4  # sub-pixel precision bits for cv2.fillPoly
    for dx in (-size, 0, size):
        for dy in (-size, 0, size):
            cx, cy = pose.x * size + dx, pose.y * size + dy
            if (
                -radius * 1.2 < cx < size + radius * 1.2
                and -radius * 1.2 < cy < size + radius * 1.2
            ):
                poly = np.round((pts + np.array([cx, cy])) * (1 << shift)).astype(np.int32)
                cv2.fillPoly(img, [poly], look.colour, cv2.LINE_AA, shift)
    noisy = img.astype(np.float32) + rng.normal(0, look.noise, img.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _advance(pose: _Pose, label: str, rate: float) -> None:
    """Moves the pose one frame along `label` at `rate` (units of SynthConfig ranges)."""
    if label == "move_left":
        pose.x = (pose.x - rate) % 1.0
    elif label == "move_right":
        pose.x = (pose.x + rate) % 1.0
    elif label == "move_up":
        pose.y = (pose.y - rate) % 1.0
    elif label == "move_down":
        pose.y = (pose.y + rate) % 1.0
    elif label == "rotate_cw":
        pose.angle = (pose.angle + rate) % 360.0
    elif label == "rotate_ccw":
        pose.angle = (pose.angle - rate) % 360.0
    elif label in ("grow", "shrink"):
        lo, hi = math.log(_MIN_SCALE), math.log(_MAX_SCALE)
        step = rate if label == "grow" else -rate
        pose.log_scale = lo + (pose.log_scale + step - lo) % (hi - lo)
    elif label != "idle":
        raise ValueError(f"unknown label {label!r}")


def _rate(label: str, rng: np.random.Generator, cfg: SynthConfig) -> float:
    if label.startswith("move_"):
        return float(rng.uniform(*cfg.speed))
    if label.startswith("rotate_"):
        return float(rng.uniform(*cfg.spin_deg))
    if label in ("grow", "shrink"):
        return float(rng.uniform(*cfg.zoom))
    return 0.0


def render_clip(
    label: str, n_frames: int, seed: int, cfg: SynthConfig = SynthConfig()
) -> np.ndarray:
    """One action from start to end: (T, S, S, 3) uint8 BGR.

    The scene is drawn from the seed before the action is, so the first frame
    of a clip is the same whatever its label.
    """
    rng = np.random.default_rng(seed)
    look, pose = _random_look(rng, cfg), _random_pose(rng)
    rate = _rate(label, np.random.default_rng([seed, 1]), cfg)  # apart from the scene's draws
    frames = np.empty((n_frames, cfg.size, cfg.size, 3), np.uint8)
    for t in range(n_frames):
        frames[t] = _draw(pose, look, rng, cfg)
        _advance(pose, label, rate)
    return frames


def render_stream(
    n_frames: int, seed: int, cfg: SynthConfig = SynthConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """An untrimmed stream: one scene, actions following each other without a cut.

    Returns frames (T, S, S, 3) uint8 BGR and per-frame label indices (T,) int64.
    """
    rng = np.random.default_rng(seed)
    look, pose = _random_look(rng, cfg), _random_pose(rng)
    frames = np.empty((n_frames, cfg.size, cfg.size, 3), np.uint8)
    labels = np.empty(n_frames, np.int64)
    t = 0
    previous = -1
    while t < n_frames:
        # Never repeat the previous action, so every boundary is a real change.
        k = int(rng.integers(len(LABELS) - 1))
        k = k + 1 if previous >= 0 and k >= previous else k
        previous = k
        length = round(rng.uniform(cfg.min_segment_s, cfg.max_segment_s) * cfg.fps)
        rate = _rate(LABELS[k], rng, cfg)
        for _ in range(min(length, n_frames - t)):
            frames[t] = _draw(pose, look, rng, cfg)
            labels[t] = k
            _advance(pose, LABELS[k], rate)
            t += 1
    return frames, labels


def write_video(frames: np.ndarray, labels: np.ndarray, path: Path, fps: float) -> Path:
    """Writes an MJPG .avi and a per-frame label CSV (frame,label) beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise OSError("OpenCV cannot open it to write (a folder you may not write to?)")
    for frame in frames:
        writer.write(frame)
    writer.release()
    csv_path = path.with_suffix(".csv")
    with csv_path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["frame", "label"])
        for i, k in enumerate(labels):
            out.writerow([i, LABELS[int(k)]])
    return csv_path
