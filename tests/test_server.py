"""The gRPC service end to end: real server on 127.0.0.1:0, real frames, real onnxruntime."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
import typing
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import grpc
import numpy as np
import onnxruntime as ort
import pytest
from background import BackgroundServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from h2_raw import END_HEADERS, HEADERS, PREFACE, SETTINGS, frame, grpc_call, header_block
from helpers import (
    LiveStream,
    MjpegCamera,
    assert_matches,
    frame_request,
    jpeg,
    png,
    render,
    stub_for,
)
from prometheus_client import CollectorRegistry

from actionstream.service.clients.scrape import scrape
from actionstream.service.config import ServeConfig
from actionstream.service.endpoint import call_end
from actionstream.service.endpoint import server as server_module
from actionstream.service.endpoint.launch import ServeError
from actionstream.service.endpoint.places import client_address
from actionstream.service.endpoint.server import SERVED_METHODS
from actionstream.service.inference.model import OnnxStepModel, bundled_model_path
from actionstream.service.telemetry import metrics_http
from actionstream.service.telemetry.metrics import DropReason, EndReason, RejectReason
from actionstream.service.trailers import REASON, SKIPPED_FRAMES, UNANSWERED_FRAMES
from actionstream.training.synth import render_stream, write_video
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

Reference = Callable[[Sequence[np.ndarray]], np.ndarray]
OpenStream = Callable[..., LiveStream]


def _decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_predictions_equal_the_onnx_model_run_directly(
    stub: pb_grpc.ActionRecognitionStub, model: OnnxStepModel, reference: Reference
) -> None:
    encoded = [jpeg(f) for f in render(24, seed=3)]
    requests = [pb.FrameRequest(options=pb.StreamOptions(top_k=4, stream_name="cam"))]
    requests += [
        frame_request(data, timestamp_us=100_000 * (i + 7)) for i, data in enumerate(encoded)
    ]
    predictions = list(stub.StreamFrames(iter(requests)))

    expected = reference([_decoded(data) for data in encoded])
    assert_matches(predictions, expected, model.metadata.labels)
    assert all(len(p.top) == 4 for p in predictions)
    # Server numbering 1, 2, 3, ... (the client sent 0), timestamps echoed, latency measured.
    assert [p.sequence for p in predictions] == list(range(1, 25))
    assert [p.timestamp_us for p in predictions] == [100_000 * (i + 7) for i in range(24)]
    assert all(0 < p.latency_seconds < 5 for p in predictions)


def test_client_sequence_numbers_and_default_top_k_are_used(
    stub: pb_grpc.ActionRecognitionStub, reference: Reference, model: OnnxStepModel
) -> None:
    frames = render(5, seed=4)
    requests = [frame_request(png(f), sequence=100 + 10 * i) for i, f in enumerate(frames)]
    predictions = list(stub.StreamFrames(iter(requests)))  # no options message at all
    assert [p.sequence for p in predictions] == [100, 110, 120, 130, 140]
    assert all(len(p.top) == 3 for p in predictions)  # ServeConfig.default_top_k
    assert_matches(predictions, reference(frames), model.metadata.labels)


def test_interleaved_streams_never_share_state(
    open_stream: OpenStream, reference: Reference, model: OnnxStepModel
) -> None:
    clips = render(12, seed=5), render(12, seed=6)
    streams = open_stream(top_k=9), open_stream(top_k=9)
    got: tuple[list[pb.Prediction], list[pb.Prediction]] = ([], [])
    for t in range(12):
        for clip, live, out in zip(clips, streams, got, strict=True):
            out.append(live.send(frame_request(png(clip[t]))))
    for clip, out in zip(clips, got, strict=True):
        assert_matches(out, reference(clip), model.metadata.labels)
    # The two answers differ by far more than the tolerance, so mixing them up would show.
    assert np.abs(reference(clips[0]) - reference(clips[1])).max() > 1e-4


def test_undecodable_frame_ends_only_its_own_stream(
    stub: pb_grpc.ActionRecognitionStub,
    open_stream: OpenStream,
    reference: Reference,
    model: OnnxStepModel,
) -> None:
    bystander_clip = render(8, seed=7)
    bystander = open_stream()
    seen = [bystander.send(frame_request(png(f))) for f in bystander_clip[:4]]

    good = render(2, seed=8)
    requests = [frame_request(png(f)) for f in good] + [frame_request(b"this is not a jpeg")]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter(requests)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "frame 3: not a JPEG or PNG image (18 bytes)"

    # The open stream carries on where it was, as if nothing happened...
    seen += [bystander.send(frame_request(png(f))) for f in bystander_clip[4:]]
    assert_matches(seen + bystander.close(), reference(bystander_clip), model.metadata.labels)
    # ...and new streams are served.
    after = list(stub.StreamFrames(iter([frame_request(png(f)) for f in good])))
    assert_matches(after, reference(good), model.metadata.labels)


def test_frames_sent_before_a_bad_one_are_answered_before_it_ends_the_call(
    stub: pb_grpc.ActionRecognitionStub,
) -> None:
    # A bad frame ended the call at once, dropping the sound frames queued before it: the
    # client got neither their predictions nor a count of them as skipped.
    for attempt in range(5):
        frames = [png(f) for f in render(3, seed=20 + attempt)]
        requests = [frame_request(f, timestamp_us=100_000 * (i + 1)) for i, f in enumerate(frames)]
        call = stub.StreamFrames(iter([*requests, frame_request(b"this is not a jpeg")]))
        answered: list[pb.Prediction] = []
        with pytest.raises(grpc.RpcError) as err:
            answered.extend(call)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "frame 4: not a JPEG or PNG image (18 bytes)"
        # The newest sound frame is answered; older ones may be skipped as the server's
        # queue allows, and every one is accounted for.
        assert answered[-1].sequence == 3, attempt
        skipped = int(dict(call.trailing_metadata())[SKIPPED_FRAMES])
        assert len(answered) + sum(p.skipped_frames for p in answered) + skipped == 3


@pytest.mark.parametrize("bad", [b"this is not a jpeg", b"cut"], ids=["on-arrival", "at-decode"])
def test_a_refused_frame_is_told_by_its_reason_alone(
    stub: pb_grpc.ActionRecognitionStub, bad: bytes
) -> None:
    # A JPEG whose header passes and whose data is cut is refused as the batch decodes
    # it, after it was queued: the trailer counted it as taken and not answered too
    # ("actionstream-unanswered-frames: 1" beside "corrupt"), where a frame refused on
    # arrival had no such count (an operator's trial).
    images = render(4, seed=31)
    cut = jpeg(cv2.resize(images[3], (640, 480)))[:1500]  # its header whole, its data not
    stream = LiveStream(stub, pb.StreamOptions())
    for i, image in enumerate(images[:3], start=1):
        assert stream.send(frame_request(png(image), sequence=i)).sequence == i
    stream.put(frame_request(cut if bad == b"cut" else bad, sequence=4))
    with pytest.raises(grpc.RpcError) as err:
        stream.outcome()
    stream.cancel()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailer = dict(err.value.trailing_metadata() or ())
    assert trailer[REASON] == ("corrupt" if bad == b"cut" else "not_an_image")
    assert UNANSWERED_FRAMES not in trailer, trailer


@pytest.fixture
def strict(start_server: Callable[..., BackgroundServer]) -> BackgroundServer:
    return start_server(max_streams=2, max_frame_bytes=50_000, max_frame_pixels=320 * 240)


@pytest.fixture
def strict_stub(strict: BackgroundServer) -> pb_grpc.ActionRecognitionStub:
    return stub_for(strict.port)


def _status(stub: pb_grpc.ActionRecognitionStub, frame: pb.Frame) -> tuple[grpc.StatusCode, str]:
    code, details, _ = _ended(stub, frame)
    return code, details


def _reason(error: grpc.RpcError) -> str | None:
    """The server's reason in a failed call's trailer."""
    assert isinstance(error, grpc.Call)
    return dict(error.trailing_metadata() or ()).get(REASON)


def _ended(
    stub: pb_grpc.ActionRecognitionStub, frame: pb.Frame
) -> tuple[grpc.StatusCode, str, str | None]:
    """The status of a call of one frame, and the reason in its trailer."""
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter([pb.FrameRequest(frame=frame)])))
    reason = dict(err.value.trailing_metadata() or ()).get(REASON)
    return err.value.code(), err.value.details(), reason


def test_raw_frame_of_the_wrong_length_is_invalid(
    strict_stub: pb_grpc.ActionRecognitionStub,
) -> None:
    raw = pb.RawImage(data=bytes(64 * 64 * 3 - 1), width=64, height=64, format=pb.PIXEL_FORMAT_BGR)
    code, details = _status(strict_stub, pb.Frame(raw=raw, sequence=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details == "frame 5: raw 64x64 image needs 12288 bytes (width*height*3), got 12287"


def test_oversized_frames_are_refused(strict_stub: pb_grpc.ActionRecognitionStub) -> None:
    # Over max_frame_pixels, by its header: refused by the service.
    big = np.zeros((240, 400, 3), np.uint8)
    code, details, reason = _ended(strict_stub, pb.Frame(encoded=png(big)))
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "too_many_pixels")
    assert "400x240 = 96000 pixels" in details and "max_frame_pixels" in details
    # Over max_frame_bytes but inside gRPC's slack: refused by the service, with
    # the code gRPC gives a message over its own limit (the README promises one code),
    # and a reason a program can tell from a full server's.
    code, details, reason = _ended(strict_stub, pb.Frame(encoded=b"\xff\xd8" + bytes(60_000)))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too_many_bytes")
    assert "image is 60002 bytes" in details and "max_frame_bytes" in details
    # Far over: refused by gRPC itself before the message is read.
    code, details = _status(strict_stub, pb.Frame(encoded=bytes(500_000)))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_streams_past_the_limit_are_refused(
    strict: BackgroundServer,
    strict_stub: pb_grpc.ActionRecognitionStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO")
    frame = frame_request(png(render(1, seed=9)[0]))
    first, second = (
        LiveStream(strict_stub, pb.StreamOptions()),
        LiveStream(strict_stub, pb.StreamOptions()),
    )
    first.send(frame)
    second.send(frame)
    with pytest.raises(grpc.RpcError) as err:
        list(strict_stub.StreamFrames(iter([frame])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # No --workers here: nothing about a worker's share (an operator's trial was told so).
    assert err.value.details().endswith("limit of 2 concurrent streams (max_streams); retry later")
    assert dict(err.value.trailing_metadata() or ())[REASON] == "refused"
    # An operator paged for a full server finds the cameras turned away in the log.
    assert re.search(
        r"stream \d+ ipv[46]:\S+ refused \(refused: RESOURCE_EXHAUSTED: the server is at its "
        r"limit of 2 concurrent streams",
        caplog.text,
    ), caplog.text
    # A place freed is a place taken.
    first.close()
    assert len(list(strict_stub.StreamFrames(iter([frame])))) == 1
    second.close()


def test_one_address_holds_no_more_streams_than_its_limit(
    start_server: Callable[..., BackgroundServer],
) -> None:
    server = start_server(max_streams_per_address=2, metrics_port=0)
    stub = stub_for(server.port)
    frame = frame_request(png(render(1, seed=9)[0]))
    first, second = (LiveStream(stub, pb.StreamOptions()) for _ in range(2))
    silent = LiveStream(stub, pb.StreamOptions())  # no frame yet: it holds no place
    first.send(frame)
    second.send(frame)
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter([frame])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.value.details().startswith(
        "127.0.0.1 holds 2 streams, this server's limit for one address"
    )
    assert dict(err.value.trailing_metadata() or ())[REASON] == "refused"
    assert _scrape(server.metrics_port)["actionstream_active_streams"] == 2
    # A place an address frees is its own again; the server's own limit (64) is far off.
    first.close()
    assert len(list(stub.StreamFrames(iter([frame])))) == 1
    assert len(silent.send(frame).top) > 0
    second.close()
    silent.close()
    m = _scrape(server.metrics_port)
    assert m["actionstream_active_streams"] == 0
    assert m["actionstream_streams_ended_total{reason=refused}"] == 1


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:52698", "127.0.0.1"),
        ("ipv6:%5B::1%5D:36958", "::1"),  # as grpcio 1.85 names an IPv6 client
        ("ipv6:%5B::ffff:192.0.2.7%5D:1", "::ffff:192.0.2.7"),
        ("unix:/run/actionstream.sock", "unix:/run/actionstream.sock"),
    ],
)
def test_a_clients_address_is_its_host_alone(peer: str, address: str) -> None:
    assert client_address(peer) == address


def test_model_info_matches_the_onnx_metadata(stub: pb_grpc.ActionRecognitionStub) -> None:
    session = ort.InferenceSession(str(bundled_model_path()), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    info = stub.GetModelInfo(pb.GetModelInfoRequest())
    assert list(info.labels) == json.loads(props["actionstream.labels"])
    size = json.loads(props["actionstream.input_size"])
    assert (info.input_height, info.input_width) == (size["height"], size["width"])
    assert info.fps == pytest.approx(float(props["actionstream.fps"]))
    assert info.background_label == props["actionstream.background_label"]
    assert info.version == props["actionstream.model_version"]


def test_health_and_reflection(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "actionstream.v1.ActionRecognition"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # List, newer than Check and Watch, answers too (grpcio's servicer leaves it out).
    statuses = health.List(health_pb2.HealthListRequest(), timeout=10).statuses
    assert {name: s.status for name, s in statuses.items()} == {
        "": health_pb2.HealthCheckResponse.SERVING,
        "actionstream.v1.ActionRecognition": health_pb2.HealthCheckResponse.SERVING,
    }

    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "actionstream.v1.ActionRecognition" in services
    assert "grpc.health.v1.Health" in services


def test_health_turns_not_serving_on_shutdown(
    start_server: Callable[..., BackgroundServer],
) -> None:
    server = start_server()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="actionstream.v1.ActionRecognition")
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    stopping = threading.Thread(target=server.stop, kwargs={"grace": 0.5})
    stopping.start()
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    stopping.join()
    channel.close()


def test_long_health_and_reflection_calls_are_capped(
    start_server: Callable[..., BackgroundServer],
) -> None:
    # Watch and reflection calls stay open as long as their clients like and hold memory;
    # nothing else bounds them. Cameras and health Check are never refused for them.
    server = start_server(max_side_calls=3, metrics_port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    health = health_pb2_grpc.HealthStub(channel)
    request = health_pb2.HealthCheckRequest(service="")
    watches = [health.Watch(request) for _ in range(3)]
    for watch in watches:
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    assert _scrape(server.metrics_port)["actionstream_side_calls"] == 3

    with pytest.raises(grpc.RpcError) as err:
        next(health.Watch(request))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_side_calls" in (err.value.details() or "")
    with pytest.raises(grpc.RpcError) as err:
        ProtoReflectionDescriptorDatabase(channel).get_services()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health.Check(request).status == health_pb2.HealthCheckResponse.SERVING
    stub = pb_grpc.ActionRecognitionStub(channel)
    assert len(list(stub.StreamFrames(iter([frame_request(png(render(1, seed=5)[0]))])))) == 1

    watches[0].cancel()  # a closed call frees its place at once
    for _ in range(100):
        if _scrape(server.metrics_port)["actionstream_side_calls"] == 2:
            break
        threading.Event().wait(0.05)
    assert (
        "actionstream.v1.ActionRecognition"
        in ProtoReflectionDescriptorDatabase(channel).get_services()
    )
    m = _scrape(server.metrics_port)
    assert m["actionstream_rpc_errors_total{code=RESOURCE_EXHAUSTED,method=Watch}"] == 1
    key = "actionstream_rpc_errors_total{code=RESOURCE_EXHAUSTED,method=ServerReflectionInfo}"
    assert m[key] == 1
    for watch in watches[1:]:
        watch.cancel()
    channel.close()
    channel.close()


def test_a_port_in_use_is_refused(start_server: Callable[..., BackgroundServer]) -> None:
    # gRPC sets SO_REUSEPORT by default, which would let a second server share the port.
    first = start_server()
    with pytest.raises(ServeError, match=f"cannot listen on 127.0.0.1:{first.port}"):
        start_server(port=first.port)


def test_streams_opened_and_closed_in_a_flood_are_logged_within_a_budget(
    start_server: Callable[..., BackgroundServer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 6,000 one-frame streams at 644 a second wrote two lines each: 250 KB of log a second.
    monkeypatch.setattr(call_end, "STREAM_LINES_BURST", 4)
    monkeypatch.setattr(call_end, "STREAM_LINES_PER_S", 0.5)
    caplog.set_level("INFO")
    server = start_server(max_streams=1)
    stub = stub_for(server.port)
    frame = frame_request(png(render(1, seed=9)[0]))

    def stream_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("stream ")]

    for _ in range(10):
        assert len(list(stub.StreamFrames(iter([frame])))) == 1
    logged = len(stream_lines())
    # The burst (two streams' opened and ended lines), and one more for each 2 s taken.
    assert 4 <= logged <= 5, stream_lines()
    # A camera whose frames go bad is still named: its line has a budget of its own.
    corrupt = frame_request(png(render(1, seed=9)[0])[:60])
    with pytest.raises(grpc.RpcError):
        list(stub.StreamFrames(iter([frame, corrupt])))
    assert "ended (invalid_frame: INVALID_ARGUMENT: frame 2: corrupt PNG" in stream_lines()[-1]
    logged = len(stream_lines())
    time.sleep(2.1)  # a line's worth
    assert len(list(stub.StreamFrames(iter([frame])))) == 1
    last = stream_lines()[logged]
    assert last.endswith(f"opened (top_k=3); {22 - logged} stream lines left out before this one")


# What an HTTP/2 client sends first: the preface and an empty SETTINGS frame.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes((0, 0, 0, 4, 0, 0, 0, 0, 0))


def _model_info(port: int) -> grpc.StatusCode:
    """The status of a GetModelInfo call on a fresh connection."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            pb_grpc.ActionRecognitionStub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes `sock` within `seconds` (what it sends is read and
    dropped: its settings, a GOAWAY)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(4096):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_connections_beyond_max_connections_are_closed_before_any_call(
    start_server: Callable[..., BackgroundServer],
) -> None:
    # 21,000 connections that only sent HTTP/2's preface took the server to its file
    # descriptor limit and 380 MB: no camera could connect, and nothing counted them.
    server = start_server(max_connections=4)
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(_PREFACE)
        assert _model_info(server.port) == grpc.StatusCode.UNAVAILABLE
        assert not _closed_within(held[0], 0.5)  # those it holds stay open
    finally:
        held[0].close()
        deadline = time.monotonic() + 10
        while _model_info(server.port) != grpc.StatusCode.OK:  # until it sees the close
            assert time.monotonic() < deadline, "a closed connection kept its place"
        for sock in held[1:]:
            sock.close()


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests_are_refused_before_they_are_inflated(
    start_server: Callable[..., BackgroundServer], compression: grpc.Compression
) -> None:
    # A message of 8 KB inflated to 8 MiB before the frame limit applied: 300 of them
    # took the server from 114 to 608 MB, which it kept.
    server = start_server()
    frame = frame_request(png(render(1, seed=9)[0]))
    target = f"127.0.0.1:{server.port}"
    with (
        grpc.insecure_channel(target, compression=compression) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        list(pb_grpc.ActionRecognitionStub(channel).StreamFrames(iter([frame])))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "is disabled" in (refused.value.details() or "")
    # Uncompressed, as every camera sends, it is answered.
    assert len(list(stub_for(server.port).StreamFrames(iter([frame])))) == 1


def test_connections_that_say_nothing_or_make_no_call_are_closed(
    start_server: Callable[..., BackgroundServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each would hold one of --max-connections' places until its client went away.
    monkeypatch.setattr(server_module, "CONNECTION_IDLE_MS", 1000)
    monkeypatch.setattr(server_module, "HANDSHAKE_TIMEOUT_MS", 1000)
    server = start_server()
    with (
        socket.create_connection(("127.0.0.1", server.port)) as silent,
        socket.create_connection(("127.0.0.1", server.port)) as idle,
    ):
        idle.sendall(_PREFACE)
        assert _closed_within(silent, 5)
        assert _closed_within(idle, 5)


def _scrape(port: int | None) -> dict[str, float]:
    assert port is not None
    return scrape(port)


def _readme_reasons(metric: str) -> set[str]:
    """The label values the README's metric table gives `metric`: its backticked words."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{metric}{{reason}}`")]
    return {word for word in re.findall(r"`([a-z_]+)`", row)}


@pytest.mark.parametrize(
    ("metric", "reasons"),
    [
        ("actionstream_streams_ended_total", typing.get_args(EndReason)),
        ("actionstream_frames_dropped_total", typing.get_args(DropReason)),
        ("actionstream_frames_rejected_total", typing.get_args(RejectReason)),
    ],
)
def test_every_reason_is_exported_at_zero_from_the_start_and_documented(
    start_server: Callable[..., BackgroundServer], metric: str, reasons: tuple[str, ...]
) -> None:
    # rate() and increase() count a series' first event only against a sample before it:
    # an alert on the first streams ever refused needs the series there at 0.
    server = start_server(metrics_port=0)
    exported = {
        key.split("reason=", 1)[1].rstrip("}"): value
        for key, value in scrape(server.metrics_port).items()
        if key.startswith(f"{metric}{{reason=")
    }
    assert exported == dict.fromkeys(reasons, 0.0)
    assert _readme_reasons(metric) == set(reasons)


def test_every_call_is_counted_by_method_beside_its_errors(
    start_server: Callable[..., BackgroundServer],
) -> None:
    # rpc_errors alone cannot be a ratio: the calls it is a share of are counted too.
    server = start_server(metrics_port=0)
    started = "actionstream_rpcs_started_total{method="
    before = {k: v for k, v in _scrape(server.metrics_port).items() if k.startswith(started)}
    served = {"StreamFrames", "WatchSource", "GetModelInfo", "Check", "Watch", "List"}
    assert set(SERVED_METHODS) == served | {"ServerReflectionInfo"}
    assert before == {f"{started}{m}}}": 0.0 for m in SERVED_METHODS}
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        for _ in range(2):
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        frames = [frame_request(png(f)) for f in render(3, seed=5)]
        assert len(list(stub.StreamFrames(iter(frames), timeout=30))) == 3
        with pytest.raises(grpc.RpcError):
            list(stub.StreamFrames(iter([frame_request(b"GIF89a")]), timeout=30))
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        with pytest.raises(grpc.RpcError) as no_such:  # a probe's typo is an error too
            health.Check(health_pb2.HealthCheckRequest(service="x.Y"), timeout=10)
        assert no_such.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary("/actionstream.v1.ActionRecognition/Nope")(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    m = _scrape(server.metrics_port)
    counts = {k[len(started) : -1]: v for k, v in m.items() if k.startswith(started)}
    assert counts == dict.fromkeys(SERVED_METHODS, 0.0) | {
        "GetModelInfo": 2.0,
        "StreamFrames": 2.0,
        "Check": 2.0,
    }
    errors = sum(v for k, v in m.items() if k.startswith("actionstream_rpc_errors_total"))
    assert errors / sum(counts.values()) == 2 / 6


def test_streams_cut_by_shutdown_are_counted_as_such(model: OnnxStepModel) -> None:
    # Not as `cancelled`, which is the client's doing: a rollout must not look like
    # cameras dropping out.
    registry = CollectorRegistry()
    cfg = ServeConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.0)
    server = BackgroundServer(cfg, registry, model)
    image = jpeg(render(1, seed=40)[0])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            live = LiveStream(pb_grpc.ActionRecognitionStub(channel), pb.StreamOptions())
            live.send(frame_request(image, timestamp_us=1_000_000))
            # Two more from a 30 fps camera, both resampled away: after its last answer,
            # only the trailer can tell the client of them, cut off or not.
            live.put(frame_request(image, timestamp_us=1_033_333))
            live.put(frame_request(image, timestamp_us=1_066_667))
            resampled = {"reason": "resampled"}
            for _ in range(200):
                if registry.get_sample_value("actionstream_frames_dropped_total", resampled) == 2:
                    break
                time.sleep(0.01)
            server.stop(grace=0.0)
            with pytest.raises(grpc.RpcError) as err:
                live.outcome()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in (err.value.details() or "")
            trailer = dict(err.value.trailing_metadata() or ())
            assert trailer == {SKIPPED_FRAMES: "2", REASON: "shutdown"}
    finally:
        server.stop()

    def ended(reason: str) -> float | None:
        return registry.get_sample_value("actionstream_streams_ended_total", {"reason": reason})

    assert (ended("shutdown"), ended("cancelled")) == (1.0, 0.0)
    errors = {"method": "StreamFrames", "code": "UNAVAILABLE"}
    assert registry.get_sample_value("actionstream_rpc_errors_total", errors) == 1.0


def test_a_client_that_hangs_up_in_the_grace_period_counts_as_cancelled(
    model: OnnxStepModel,
) -> None:
    # A rollout's grace period is the clients' time to finish: one that hangs up then
    # counts as cancelled; one still open when it runs out, as cut by the shutdown.
    registry = CollectorRegistry()
    cfg = ServeConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=2.0)
    server = BackgroundServer(cfg, registry, model)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.ActionRecognitionStub(channel)
            leaving, staying = (LiveStream(stub, pb.StreamOptions()) for _ in range(2))
            for n, live in enumerate((leaving, staying)):
                live.send(frame_request(jpeg(render(1, seed=41 + n)[0])))
            stopping = threading.Thread(target=server.stop, kwargs={"grace": 2.0})
            stopping.start()
            time.sleep(0.5)
            leaving.cancel()
            with pytest.raises(grpc.RpcError) as err:
                staying.outcome()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            stopping.join(30)
    finally:
        server.stop()

    def ended(reason: str) -> float | None:
        return registry.get_sample_value("actionstream_streams_ended_total", {"reason": reason})

    assert (ended("shutdown"), ended("cancelled")) == (1.0, 1.0)
    for code in ("UNAVAILABLE", "CANCELLED"):
        errors = {"method": "StreamFrames", "code": code}
        assert registry.get_sample_value("actionstream_rpc_errors_total", errors) == 1.0


def test_metrics_count_every_frame(start_server: Callable[..., BackgroundServer]) -> None:
    server = start_server(metrics_port=0)
    stub = stub_for(server.port)
    n = 12
    live = LiveStream(stub, pb.StreamOptions(stream_name="metered"))
    predictions = [live.send(frame_request(png(f))) for f in render(n, seed=10)]
    assert _scrape(server.metrics_port)["actionstream_active_streams"] == 1
    live.close()
    with pytest.raises(grpc.RpcError):
        list(stub.StreamFrames(iter([frame_request(b"GIF89a")])))

    m = _scrape(server.metrics_port)
    assert m["actionstream_frames_received_total"] == n + 1
    assert m["actionstream_frames_processed_total"] == n
    assert m["actionstream_frame_latency_seconds_count"] == n
    assert m["actionstream_inference_seconds_count"] == n
    assert m["actionstream_decode_seconds_count"] == n
    assert m["actionstream_active_streams"] == 0
    assert m["actionstream_frames_rejected_total{reason=not_an_image}"] == 1
    assert m["actionstream_rpc_errors_total{code=INVALID_ARGUMENT,method=StreamFrames}"] == 1
    by_label = {k: v for k, v in m.items() if k.startswith("actionstream_predictions_total")}
    assert sum(by_label.values()) == n
    top = predictions[-1].top[0].label
    assert m[f"actionstream_predictions_total{{label={top}}}"] >= 1
    info = [k for k in m if k.startswith("actionstream_model_info")]
    assert len(info) == 1 and "labels_count=9" in info[0] and "version=" in info[0]


def test_metrics_are_served_at_their_path_alone(
    start_server: Callable[..., BackgroundServer],
) -> None:
    # Every path answered with the metrics, so a scrape config's wrong path looked fine.
    server = start_server(metrics_port=0)
    base = f"http://127.0.0.1:{server.metrics_port}"

    def get(path: str, method: str = "GET") -> tuple[int, str]:
        request = urllib.request.Request(base + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, text = get("/metrics?name[]=actionstream_frames_received_total")
    assert status == 200 and "actionstream_frames_received_total 0.0" in text
    assert get("/") == (200, "actionstream: metrics are at /metrics\n")
    for path in ("/metric", "/metrics/", "/favicon.ico", "/metrics/../x"):
        assert get(path) == (404, "not found: metrics are at /metrics\n"), path
    assert get("/metrics", "HEAD") == (200, "")
    assert get("/metrics", "POST")[0] == 405
    assert "actionstream_frames_received_total" in _scrape(server.metrics_port)


def test_half_sent_metrics_requests_hold_neither_threads_nor_the_scrape(
    start_server: Callable[..., BackgroundServer],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # Each connection that sent half a request held a thread and a descriptor forever:
    # at the descriptor limit gRPC could accept no connection either.
    monkeypatch.setattr(metrics_http, "REQUEST_DEADLINE_S", 1.0)
    monkeypatch.setattr(metrics_http._QuietHandler, "timeout", 1.0)
    server = start_server(metrics_port=0)
    threads = threading.active_count()
    flood = []
    for _ in range(100):  # from another loopback address than the scrapes below
        conn = socket.create_connection(
            ("127.0.0.1", server.metrics_port), timeout=5, source_address=("127.0.0.2", 0)
        )
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        flood.append(conn)
    time.sleep(0.3)
    held = threading.active_count() - threads  # a handler thread and its deadline each
    assert held <= 2 * metrics_http.PER_ADDRESS, held
    assert "actionstream_frames_received_total" in _scrape(server.metrics_port)
    stub_for(server.port).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    # A client that sends a byte just inside each read's timeout is cut at the deadline.
    drip = socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5)
    start = time.monotonic()
    with contextlib.suppress(OSError):
        while time.monotonic() - start < 5:
            drip.sendall(b"X")
            time.sleep(0.3)
    assert time.monotonic() - start < 3
    for conn in flood:
        conn.close()
    drip.close()
    time.sleep(1.5)  # the flood's own reads time out meanwhile
    # Cut or timed out, a client is no error of the server's: no traceback on stderr.
    assert "Traceback" not in capfd.readouterr().err


def test_watch_source_is_off_unless_allowed(stub: pb_grpc.ActionRecognitionStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.WatchSource(pb.SourceRequest(source="0")))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--allow-sources" in err.value.details()


def _video(path: Path, n: int, fps: float, seed: int) -> tuple[Path, list[np.ndarray]]:
    """A synthetic video of `n` frames at `fps`, and its frames as OpenCV decodes them."""
    frames, labels = render_stream(n, seed=seed)
    write_video(frames, labels, path, fps=fps)
    capture = cv2.VideoCapture(str(path))
    decoded = [capture.read()[1] for _ in range(n)]
    capture.release()
    return path, decoded


def test_watch_source_streams_a_video_file(
    start_server: Callable[..., BackgroundServer],
    tmp_path: Path,
    reference: Reference,
    model: OnnxStepModel,
) -> None:
    video, decoded = _video(tmp_path / "clip.avi", 10, fps=10.0, seed=11)
    server = start_server(allow_sources=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.ActionRecognitionStub(channel)
        request = pb.SourceRequest(source=str(video), options=pb.StreamOptions(top_k=2))
        predictions = list(stub.WatchSource(request))
        assert [p.sequence for p in predictions] == list(range(1, 11))
        assert_matches(predictions, reference(decoded), model.metadata.labels)

        # A name past the file system's limit names no file either (as with an allowlist).
        for absent in (tmp_path / "absent.avi", tmp_path / f"{'a' * 300}.avi"):
            with pytest.raises(grpc.RpcError) as err:
                list(stub.WatchSource(pb.SourceRequest(source=str(absent))))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert "no such video file" in err.value.details()
        # A blank source is told as such.
        with pytest.raises(grpc.RpcError) as err:
            list(stub.WatchSource(pb.SourceRequest(source="  ")))
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "source is blank; give a camera index, a video file or a URL",
        )


def test_watch_source_takes_a_faster_file_at_the_models_rate(
    start_server: Callable[..., BackgroundServer],
    tmp_path: Path,
    reference: Reference,
    model: OnnxStepModel,
) -> None:
    # 32 frames at 30 fps for a 10 fps model: every third frame, by the file's own
    # timeline (read as fast as the model steps, they all come at once), as training
    # and evaluation take them.
    video, decoded = _video(tmp_path / "fast.avi", 32, fps=30.0, seed=12)
    assert model.metadata.fps == 10.0

    server = start_server(allow_sources=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = pb_grpc.ActionRecognitionStub(channel).WatchSource(
            pb.SourceRequest(source=str(video), options=pb.StreamOptions(top_k=2))
        )
        predictions = list(call)
        trailer = dict(call.trailing_metadata() or ())
    taken = list(range(0, 32, 3))  # source frames 1, 4, ..., 31
    assert [p.sequence for p in predictions] == [i + 1 for i in taken]
    assert [p.timestamp_us for p in predictions] == [round(i * 1e6 / 30) for i in taken]
    assert [p.skipped_frames for p in predictions] == [0] + [2] * (len(taken) - 1)
    assert trailer["actionstream-skipped-frames"] == "1"  # frame 32, after the last answer
    assert_matches(predictions, reference([decoded[i] for i in taken]), model.metadata.labels)


# Bytes that are no protobuf message at all: a varint key that never ends.
NOT_A_MESSAGE = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 1, 2])


def test_requests_that_are_not_their_message_are_invalid_argument_and_counted(
    start_server: Callable[..., BackgroundServer], caplog: pytest.LogCaptureFixture
) -> None:
    # gRPC parses a unary request before any handler: left to it, such bytes got UNKNOWN
    # with the parser's exception class and a traceback in the log, in no metric.
    server = start_server(metrics_port=0, allow_sources=True)
    methods = {
        "/actionstream.v1.ActionRecognition/GetModelInfo": "actionstream.v1.GetModelInfoRequest",
        "/actionstream.v1.ActionRecognition/WatchSource": "actionstream.v1.SourceRequest",
        "/grpc.health.v1.Health/Check": "grpc.health.v1.HealthCheckRequest",
        "/grpc.health.v1.Health/Watch": "grpc.health.v1.HealthCheckRequest",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": (
            "grpc.reflection.v1alpha.ServerReflectionRequest"
        ),
    }
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method, message in methods.items():
            with pytest.raises(grpc.RpcError) as refused:
                if method.endswith(("Check", "GetModelInfo")):
                    channel.unary_unary(method)(NOT_A_MESSAGE, timeout=10)
                elif method.endswith("ServerReflectionInfo"):
                    list(channel.stream_stream(method)(iter([NOT_A_MESSAGE]), timeout=10))
                else:
                    list(channel.unary_stream(method)(NOT_A_MESSAGE, timeout=10))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
            assert refused.value.details() == f"the request is not a valid {message}"
            assert _reason(refused.value) == "malformed", method
        # Well-formed calls are untouched.
        stub = pb_grpc.ActionRecognitionStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10).labels
        health = health_pb2_grpc.HealthStub(channel)
        check = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "actionstream.v1.ActionRecognition" in services
    m = _scrape(server.metrics_port)
    for method in methods:
        name = method.rsplit("/", 1)[1]
        assert m[f"actionstream_rpc_errors_total{{code=INVALID_ARGUMENT,method={name}}}"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_one_request_calls_that_never_send_it_are_ended_and_bounded(
    start_server: Callable[..., BackgroundServer],
) -> None:
    # gRPC waited for such a request as long as the client liked, outside every cap:
    # 60,000 silent GetModelInfo and Check calls took a server from 151 to 320 MB.
    server = start_server(metrics_port=0, idle_timeout_seconds=1.0, max_waiting_calls=2)
    never = threading.Event()

    def silent() -> Iterator[bytes]:  # opens the call and sends nothing
        never.wait(30)
        yield from ()

    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        info = channel.stream_unary("/actionstream.v1.ActionRecognition/GetModelInfo")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as late:
            info(silent(), timeout=20)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert late.value.details() == (
            "no request for 1 s (idle_timeout_seconds); the call was ended"
        )
        assert _reason(late.value) == "idle"
        assert time.monotonic() - started < 10
        with pytest.raises(grpc.RpcError) as empty:  # half-closed with no request at all
            channel.stream_unary("/grpc.health.v1.Health/Check")(iter([]), timeout=20)
        assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert empty.value.details() == "the call ended without its request"
        assert _reason(empty.value) == "missing"
        # Past the cap, the longest-waiting call makes room.
        watch = channel.stream_stream("/actionstream.v1.ActionRecognition/WatchSource")
        first = watch(silent(), timeout=20)
        time.sleep(0.2)
        others = [info.future(silent(), timeout=20) for _ in range(2)]
        with pytest.raises(grpc.RpcError) as evicted:
            list(first)
        assert evicted.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "its limit of 2 calls waiting for one" in evicted.value.details()
        assert _reason(evicted.value) == "evicted"  # told apart from a frame too large
        # A call that sends its request is answered as ever, the cap full or not.
        stub = pb_grpc.ActionRecognitionStub(channel)
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).labels
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
        never.set()
        for other in others:
            with contextlib.suppress(grpc.RpcError):
                other.result()
    m = _scrape(server.metrics_port)
    errors = "actionstream_rpc_errors_total{code="
    assert m[f"{errors}DEADLINE_EXCEEDED,method=GetModelInfo}}"] >= 1
    assert m[f"{errors}INVALID_ARGUMENT,method=Check}}"] == 1
    assert m[f"{errors}RESOURCE_EXHAUSTED,method=WatchSource}}"] == 1


def test_one_request_calls_whose_connection_closes_are_not_counted_as_refused(
    start_server: Callable[..., BackgroundServer],
) -> None:
    # A connection that closes ends its calls' requests just before gRPC cancels the
    # calls: waiting one loop turn for that, the server counted 123 of 1,500 such
    # GetModelInfo calls as sent without their request (INVALID_ARGUMENT).
    server = start_server(metrics_port=0)
    opened = header_block(grpc_call(server.port, "/actionstream.v1.ActionRecognition/GetModelInfo"))
    for _ in range(100):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(PREFACE + frame(SETTINGS, b""))
            for stream in range(1, 11, 2):  # five calls, none of them sends its request
                sock.sendall(frame(HEADERS, opened, END_HEADERS, stream))
            time.sleep(0.02)
    time.sleep(1.5)  # the last calls' ends
    m = _scrape(server.metrics_port)
    # Most reach the servicer's interceptor (gRPC starts none of a connection closed first).
    assert m["actionstream_rpcs_started_total{method=GetModelInfo}"] >= 250
    assert m.get("actionstream_rpc_errors_total{code=INVALID_ARGUMENT,method=GetModelInfo}", 0) == 0


def test_a_clients_deadline_is_counted_as_such(
    start_server: Callable[..., BackgroundServer], tmp_path: Path
) -> None:
    # Not as a completed stream (its input ends first) nor as the client's cancelling.
    server = start_server(metrics_port=0, allow_sources=True)
    image = jpeg(render(1, seed=41)[0])
    stalled = threading.Event()

    def one_frame_then_nothing() -> Iterator[pb.FrameRequest]:
        yield frame_request(image)
        stalled.wait(10)

    stub = stub_for(server.port)
    with pytest.raises(grpc.RpcError) as expired:
        list(stub.StreamFrames(one_frame_then_nothing(), timeout=1.0))
    stalled.set()
    assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # A camera that falls silent after its frames: the server waits on its read.
    camera = MjpegCamera(list(render(3, seed=42)))
    try:
        with pytest.raises(grpc.RpcError) as expired:
            list(stub.WatchSource(pb.SourceRequest(source=camera.url), timeout=2.0))
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(100):  # the camera stays until the server has let the call go
            m = _scrape(server.metrics_port)
            if m.get("actionstream_active_streams") == 0:
                break
            time.sleep(0.05)
    finally:
        camera.close()
    for method in ("StreamFrames", "WatchSource"):
        assert m[f"actionstream_rpc_errors_total{{code=DEADLINE_EXCEEDED,method={method}}}"] == 1
        assert m.get(f"actionstream_rpc_errors_total{{code=CANCELLED,method={method}}}", 0) == 0
    assert m["actionstream_streams_ended_total{reason=cancelled}"] == 2
    assert m["actionstream_streams_ended_total{reason=completed}"] == 0


def test_an_aged_connection_moves_new_streams_and_keeps_open_ones(
    start_server: Callable[..., BackgroundServer], caplog: pytest.LogCaptureFixture
) -> None:
    # Behind one Service, a client's connection (every stream on it) sticks to one pod; a
    # connection asked to move on lets its new streams reach pods added since.
    caplog.set_level("INFO")
    server = start_server(max_connection_age_seconds=1.0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.ActionRecognitionStub(channel)
    frames = [frame_request(png(image)) for image in render(30, seed=13)]
    early = LiveStream(stub, pb.StreamOptions())
    early.send(frames[0])
    time.sleep(1.6)  # past the age (and its 10% jitter): the connection is asked to go
    late = LiveStream(stub, pb.StreamOptions())
    late.send(frames[0])
    # The stream open as it aged goes on, its state intact, well past the age.
    for request in frames[1:]:
        assert early.send(request).sequence > 0
    assert early.close() == [] and late.close() == []
    peers = re.findall(r"stream \d+ (ipv4:127\.0\.0\.1:\d+) opened", caplog.text)
    assert len(peers) == 2 and peers[0] != peers[1], caplog.text
