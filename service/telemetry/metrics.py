"""Every Prometheus metric the service exports, on a registry the caller owns.

The registry is injected rather than the process-global default, so tests
and embedded servers each count from zero and never collide on names.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from actionstream.contract import ModelSpec

# The values of the counters' `reason` labels, in one place: mypy checks every use, and
# each is exported at 0 from the start (rate() and increase() see a series' first event
# only against a sample from before it).
# Why a frame was refused: FrameError's reasons, and `malformed` (not a FrameRequest).
RejectReason = Literal[
    "missing", "empty", "too_many_bytes", "too_many_pixels", "not_an_image", "corrupt",
    "bad_raw", "slow_timestamps", "fast_timestamps", "malformed",
]  # fmt: skip
# Why a frame accepted was never stepped.
DropReason = Literal["resampled", "overload", "stream_ended"]
# How a stream ended (README, "Metrics").
EndReason = Literal[
    "completed", "cancelled", "shutdown", "idle", "not_reading", "evicted", "invalid_frame",
    "malformed", "refused", "invalid_source", "source_lost", "error",
]  # fmt: skip
# Frame-to-prediction latency spans decode + queueing + inference: from about
# a millisecond on an idle server to seconds when frames far larger than the model's
# input queue for the heavy lane (3 s measured with three 4K streams), up to the idle
# timeout's 30 s by default. A p99 past the last bucket would read as that bucket.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# Frames in one model step: powers of two up to past the largest --max-batch.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# One model step or one decode: sub-millisecond up to a large frame (a 4K JPEG takes
# about 0.3 s here, a progressive one at the scan limit longer).
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class Metrics:
    """The service's metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry, methods: Iterable[str] = ()) -> None:
        """`methods`: those the server serves, by the name the rpc counters give them
        (`StreamFrames`), exported at 0 from the start as the reasons are."""
        self.registry = registry
        self.frames_received = Counter(
            "actionstream_frames_received",
            "Frames received from clients (and requests that should have been frames: "
            "rejected as missing or malformed) or read from sources.",
            registry=registry,
        )
        self.frames_processed = Counter(
            "actionstream_frames_processed",
            "Frames run through the model and answered with a prediction.",
            registry=registry,
        )
        self.frames_rejected = Counter(
            "actionstream_frames_rejected",
            "Frames refused before inference, by reason.",
            ["reason"],
            registry=registry,
        )
        self.frames_dropped = Counter(
            "actionstream_frames_dropped",
            "Frames accepted but never run through the model, by reason: `resampled` (more "
            "frames than the model's rate), `overload` (the oldest waiting frame, when "
            "inference was behind), `stream_ended` (still waiting when the stream ended).",
            ["reason"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "actionstream_batch_size",
            "Streams stepped together in one batched model step.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.streams_ended = Counter(
            "actionstream_streams_ended",
            "Streams ended, by how: completed, cancelled (the client cancelled or vanished, "
            "or gRPC refused a message over its size limit), shutdown (still open when the "
            "grace period at shutdown ran out), idle (sent nothing for "
            "idle_timeout), not_reading (took no prediction for idle_timeout), "
            "invalid_frame, malformed, refused (max_streams), evicted (waited longest for "
            "a first frame when max_waiting_calls was reached), invalid_source (WatchSource could "
            "not find or open its source), source_lost (a camera or live stream WatchSource "
            "read stopped sending frames), error (a server fault).",
            ["reason"],
            registry=registry,
        )
        # The multiprocess modes say how `serve --workers N` adds up its processes'
        # values; a single process ignores them.
        self.active_streams = Gauge(
            "actionstream_active_streams",
            "Streams holding a place now (StreamFrames after its first frame, WatchSource).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.waiting_calls = Gauge(
            "actionstream_waiting_calls",
            "StreamFrames calls open without a first frame yet (they hold no place).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.side_calls = Gauge(
            "actionstream_side_calls",
            "Health Watch and reflection calls open now (capped at max_side_calls).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.frame_latency = Histogram(
            "actionstream_frame_latency_seconds",
            "Time from receiving a frame to its prediction being ready to send (a client "
            "slow to read its predictions adds no latency here).",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "actionstream_inference_seconds",
            "Time of one onnxruntime step (of a whole batch).",
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.decode = Histogram(
            "actionstream_decode_seconds",
            "Time to decode and resize one frame.",
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "actionstream_predictions",
            "Predictions sent, by their top label.",
            ["label"],
            registry=registry,
        )
        self.rpcs_started = Counter(
            "actionstream_rpcs_started",
            "RPCs the server took, by method, counted as they start (the denominator of "
            "the error ratio with actionstream_rpc_errors).",
            ["method"],
            registry=registry,
        )
        self.rpc_errors = Counter(
            "actionstream_rpc_errors",
            "RPCs that ended with a status other than OK, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        # A gauge fixed at 1 rather than an Info: the same series, and one that
        # prometheus_client's multiprocess mode (serve --workers) can collect.
        self.model = Gauge(
            "actionstream_model_info",
            "The model being served (always 1; the labels describe it).",
            ["version", "labels_count", "input_size", "fps"],
            registry=registry,
            multiprocess_mode="max",
        )

        self._rejected = {r: self.frames_rejected.labels(r) for r in get_args(RejectReason)}
        self._dropped = {r: self.frames_dropped.labels(r) for r in get_args(DropReason)}
        self._ended = {r: self.streams_ended.labels(r) for r in get_args(EndReason)}
        self._started = {m: self.rpcs_started.labels(m) for m in methods}

    def rejected(self, reason: RejectReason) -> Counter:
        """The rejected-frames counter for `reason`."""
        return self._rejected[reason]

    def dropped(self, reason: DropReason) -> Counter:
        """The dropped-frames counter for `reason`."""
        return self._dropped[reason]

    def ended(self, reason: EndReason) -> Counter:
        """The streams-ended counter for `reason`."""
        return self._ended[reason]

    def started(self, method: str) -> Counter:
        """The calls-started counter for `method` (its name alone: `StreamFrames`)."""
        counter = self._started.get(method)
        return counter if counter is not None else self.rpcs_started.labels(method)

    def describe_model(self, metadata: ModelSpec) -> None:
        self.model.labels(
            version=metadata.version,
            labels_count=str(len(metadata.labels)),
            input_size=f"{metadata.width}x{metadata.height}",
            fps=f"{metadata.fps:g}",
        ).set(1)
