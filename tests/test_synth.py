"""The synthetic data must need time: no single frame may tell the classes apart."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from actionstream.training.synth import LABELS, SynthConfig, render_clip, render_stream, write_video


def test_first_frame_is_the_same_whatever_the_action() -> None:
    firsts = [render_clip(label, 3, seed=11)[0] for label in LABELS]
    for frame in firsts[1:]:
        np.testing.assert_array_equal(frame, firsts[0])


def test_only_idle_keeps_still() -> None:
    quiet = SynthConfig(noise=(0.0, 0.0))  # without sensor noise, only motion changes pixels
    for label in LABELS:
        clip = render_clip(label, 4, seed=11, cfg=quiet).astype(np.int16)
        change = np.abs(np.diff(clip, axis=0)).mean()
        assert (change == 0) == (label == "idle"), (label, change)


def test_object_position_does_not_give_the_class_away() -> None:
    # Brightness-weighted centre of the shape over many frames, per class:
    # with wrap-around motion it should spread over the frame for every class.
    cfg = SynthConfig()
    centres: dict[str, list[float]] = {label: [] for label in LABELS[1:5]}
    for label in centres:
        for seed in range(40):
            clip = render_clip(label, 30, seed, cfg)
            last = clip[-1].astype(np.float32).max(axis=2)
            _, xs = np.nonzero(last > np.percentile(last, 97))
            centres[label].append(float(xs.mean() / cfg.size))
    means = [np.mean(v) for v in centres.values()]
    assert max(means) - min(means) < 0.15, means


def test_streams_switch_actions_and_are_reproducible() -> None:
    frames, labels = render_stream(200, seed=3)
    assert frames.shape == (200, 64, 64, 3) and frames.dtype == np.uint8
    assert len(np.unique(labels)) >= 4
    assert (labels[1:] != labels[:-1]).sum() >= 4
    again, labels_again = render_stream(200, seed=3)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(labels, labels_again)


def test_unknown_label_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown label"):
        render_clip("moonwalk", 3, seed=0)


def test_written_video_decodes_with_opencv(tmp_path) -> None:
    frames, labels = render_stream(25, seed=4, cfg=SynthConfig(size=96))
    csv_path = write_video(frames, labels, tmp_path / "feed.avi", fps=10)
    cap = cv2.VideoCapture(str(tmp_path / "feed.avi"))
    decoded = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        decoded.append(frame)
    assert len(decoded) == 25 and decoded[0].shape == (96, 96, 3)
    assert abs(cap.get(cv2.CAP_PROP_FPS) - 10) < 1e-6
    # MJPG is lossy, but only a little.
    assert np.abs(decoded[5].astype(int) - frames[5]).mean() < 6
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "frame,label" and len(rows) == 26
    assert rows[1].split(",")[1] == LABELS[labels[0]]
