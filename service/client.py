"""`actionstream stream`: push a video file or camera to a server, print what it sees.

The client behaves like a camera: it reads frames with OpenCV, JPEG-encodes
them, and sends them over one StreamFrames call numbered 1, 2, 3, ... with
their capture time, paced at the source's frame rate unless told to go as
fast as the server answers. Latency is measured here, from handing a frame to
gRPC to receiving its prediction, so it includes the network both ways.
"""

from __future__ import annotations

import contextlib
import csv
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

from actionstream.resampling import Resampler
from actionstream.service.config import StreamConfig
from actionstream.service.sources import SourceError, VideoSource
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

# Called for each prediction with the frame's true label (if known) and its latency in ms.
PredictionCallback = Callable[[pb.Prediction, str | None, float], None]


@dataclass(frozen=True)
class StreamSummary:
    """How one stream went, from the client's side."""

    frames_sent: int
    frames_answered: int
    accuracy: float | None  # top-1 over answered frames with a known label; None without labels
    p50_ms: float | None  # send -> prediction received; None if nothing was answered
    p99_ms: float | None
    predictions: tuple[pb.Prediction, ...]
    interrupted: bool = False  # stopped with Ctrl-C before the source ended


class StreamError(Exception):
    """An expected failure (bad source, unreachable server, refused stream), in words."""


def read_labels(path: Path) -> dict[int, str]:
    """Ground truth from a `frame,label` CSV, as `actionstream synth` writes it."""
    try:
        with path.open(newline="") as f:
            return {int(row["frame"]): row["label"] for row in csv.DictReader(f)}
    except OSError as e:
        raise StreamError(f"cannot read labels {path}: {e.strerror}") from None
    except (KeyError, TypeError, ValueError):
        raise StreamError(f"{path}: expected a CSV with columns frame,label") from None


def stream_source(
    cfg: StreamConfig, on_prediction: PredictionCallback | None = None
) -> StreamSummary:
    """Streams `cfg.source` to `cfg.target` and returns the summary; raises StreamError."""
    truth = read_labels(Path(cfg.labels)) if cfg.labels else None
    try:
        source = VideoSource(cfg.source)
    except SourceError as e:
        raise StreamError(f"cannot open source: {e}") from None

    sent_at: dict[int, float] = {}
    fps = source.fps if cfg.realtime else None
    start_us = time.time_ns() // 1000
    answered: queue.Queue[None] = queue.Queue()
    done = threading.Event()

    def capture_us(sequence: int) -> int:
        # Sent faster than real time, a file's frames keep their own timeline; live, a
        # frame was captured when it was read.
        if not cfg.realtime and source.fps:
            return start_us + round((sequence - 1) * 1e6 / source.fps)
        return time.time_ns() // 1000

    def requests(resampler: Resampler | None) -> Iterator[pb.FrameRequest]:
        # Runs on a gRPC thread; owns the source from here on. As fast as the server
        # answers (`resampler` set): one frame in flight, and only the frames the server
        # would take at the model's rate, so none is dropped and none waits unanswered.
        try:
            yield pb.FrameRequest(options=pb.StreamOptions(top_k=cfg.top_k, stream_name=cfg.source))
            start = time.perf_counter()
            sequence = 0
            while cfg.max_frames == 0 or sequence < cfg.max_frames:
                image = source.read()
                if image is None:
                    return
                sequence += 1
                if fps is not None:
                    time.sleep(max(0.0, start + (sequence - 1) / fps - time.perf_counter()))
                timestamp_us = capture_us(sequence)
                if resampler is not None and not resampler.take(timestamp_us):
                    continue
                ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
                if not ok:
                    raise StreamError(f"frame {sequence}: OpenCV could not JPEG-encode it")
                frame = pb.Frame(
                    encoded=jpeg.tobytes(), sequence=sequence, timestamp_us=timestamp_us
                )
                sent_at[sequence] = time.perf_counter()
                yield pb.FrameRequest(frame=frame)
                while resampler is not None and not done.is_set():
                    with contextlib.suppress(queue.Empty):
                        answered.get(timeout=0.1)
                        break
        finally:
            source.close()

    predictions: list[pb.Prediction] = []
    latencies_ms: list[float] = []
    correct = labelled = 0
    interrupted = False
    with grpc.insecure_channel(cfg.target) as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        try:
            resampler = None
            if not cfg.realtime:
                resampler = Resampler(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30).fps)
            call = stub.StreamFrames(requests(resampler))
            for prediction in call:
                latency_ms = (time.perf_counter() - sent_at[prediction.sequence]) * 1e3
                label = truth.get(prediction.sequence - 1) if truth is not None else None
                if label is not None:
                    labelled += 1
                    correct += prediction.top[0].label == label
                predictions.append(prediction)
                latencies_ms.append(latency_ms)
                answered.put(None)
                if on_prediction is not None:
                    on_prediction(prediction, label, latency_ms)
        except KeyboardInterrupt:
            call.cancel()
            interrupted = True
        except grpc.RpcError as e:
            raise StreamError(_describe(e, cfg.target)) from None
        finally:
            done.set()

    p50, p99 = np.percentile(latencies_ms, [50, 99]) if latencies_ms else (None, None)
    return StreamSummary(
        frames_sent=len(sent_at),
        frames_answered=len(predictions),
        accuracy=correct / labelled if truth is not None and labelled else None,
        p50_ms=None if p50 is None else float(p50),
        p99_ms=None if p99 is None else float(p99),
        predictions=tuple(predictions),
        interrupted=interrupted,
    )


def _describe(error: grpc.RpcError, target: str) -> str:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the server at {target}: {details}"
    return f"the server ended the stream with {code.name}: {details}"


def _print_prediction(prediction: pb.Prediction, truth: str | None, latency_ms: float) -> None:
    best = prediction.top[0]
    line = f"frame {prediction.sequence:6d}  {best.label:>12s} {best.probability:5.2f}"
    if truth is not None:
        line += f"  truth {truth:>12s} {'✓' if truth == best.label else '✗'}"
    print(f"{line}  {latency_ms:6.1f} ms", flush=True)


def print_summary(summary: StreamSummary) -> None:
    print(f"frames: {summary.frames_sent} sent, {summary.frames_answered} answered")
    if summary.accuracy is not None:
        print(f"accuracy: {summary.accuracy:.1%} (top-1, per frame)")
    if summary.p50_ms is not None and summary.p99_ms is not None:
        print(
            f"latency (send to prediction): p50 {summary.p50_ms:.1f} ms, "
            f"p99 {summary.p99_ms:.1f} ms"
        )


def run_stream(cfg: StreamConfig) -> int:
    """`actionstream stream`: 0 when the source was streamed to the end, 1 on failure."""
    try:
        summary = stream_source(cfg, None if cfg.quiet else _print_prediction)
    except StreamError as e:
        print(f"actionstream stream: {e}", file=sys.stderr)
        return 1
    print_summary(summary)
    return 130 if summary.interrupted else 0
