"""Shared service fixtures: real servers on 127.0.0.1:0, real gRPC, real onnxruntime.

Nothing is mocked. Servers share one loaded model (loading is the slow part)
but each gets its own Prometheus registry, so counts start at zero.
"""

from __future__ import annotations

import os

# Under pytest-xdist the workers share the cores: one torch (OpenMP) thread in each, and
# in the commands they start, rather than one a core in each, which oversubscribes them:
# OpenMP's threads spin while they wait for each other. Set before anything loads torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from background import BackgroundServer
from helpers import LiveStream, close_channels
from prometheus_client import CollectorRegistry

from actionstream.contract import INPUT_FRAMES, OUTPUT_LOGITS, read_props
from actionstream.service.config import ServeConfig
from actionstream.service.inference.model import OnnxStepModel, bundled_model_path
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

# A deep queue: tests send whole clips at once and expect every frame answered; the
# real-time tests that are about dropping set their own.
TEST_CONFIG = ServeConfig(
    host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.0, queue_frames=1000
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files with image tests first, then files with slow tests, each file whole and in
    its own order: the workers of `pytest -n` take whole files (`--dist loadfile`, which
    keeps a file's fixtures to one worker), and a long file taken last would finish alone.
    """
    rank: dict[Path, int] = {}
    for item in items:
        mine = (
            0 if item.get_closest_marker("docker") else 1 if item.get_closest_marker("slow") else 2
        )
        rank[item.path] = min(rank.get(item.path, 2), mine)
    items.sort(key=lambda item: rank[item.path])


@pytest.fixture(scope="session")
def model() -> OnnxStepModel:
    return OnnxStepModel.load(threads=1)


@pytest.fixture
def start_server(model: OnnxStepModel) -> Iterator[Callable[..., BackgroundServer]]:
    """Starts servers with TEST_CONFIG plus overrides; stops them all after the test."""
    servers: list[BackgroundServer] = []

    def start(**overrides: Any) -> BackgroundServer:
        cfg = dataclasses.replace(TEST_CONFIG, **overrides)
        server = BackgroundServer(cfg, CollectorRegistry(), model)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _channels_closed() -> Iterator[None]:
    yield
    close_channels()


@pytest.fixture
def server(start_server: Callable[..., BackgroundServer]) -> BackgroundServer:
    return start_server()


@pytest.fixture
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> pb_grpc.ActionRecognitionStub:
    return pb_grpc.ActionRecognitionStub(channel)


@pytest.fixture
def open_stream(stub: pb_grpc.ActionRecognitionStub) -> Iterator[Callable[..., LiveStream]]:
    streams: list[LiveStream] = []

    def open_(top_k: int = 0, name: str = "") -> LiveStream:
        live = LiveStream(stub, pb.StreamOptions(top_k=top_k, stream_name=name))
        streams.append(live)
        return live

    yield open_
    for live in streams:
        live.cancel()


@pytest.fixture(scope="session")
def reference() -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """Runs the bundled ONNX file with onnxruntime directly, state carried, one frame a step.

    Independent of service code: the state layout is read from the file's
    own metadata through the contract. Returns softmax probabilities (T, C).
    """
    # One intra-op thread, like the test servers, so both sum in the same order: bit-equal.
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(bundled_model_path()), options, providers=["CPUExecutionProvider"]
    )
    spec = read_props(session.get_modelmeta().custom_metadata_map, "default.onnx")

    def run(images: Sequence[np.ndarray]) -> np.ndarray:
        state = {s.input: np.zeros([1, *s.shape], np.float32) for s in spec.states}
        probs = []
        for image in images:
            logits, *outs = session.run(
                [OUTPUT_LOGITS, *(s.output for s in spec.states)],
                {INPUT_FRAMES: image[None], **state},
            )
            state = {s.input: out for s, out in zip(spec.states, outs, strict=True)}
            e = np.exp(logits[0].astype(np.float64) - logits[0].max())
            probs.append(e / e.sum())
        return np.stack(probs)

    return run
