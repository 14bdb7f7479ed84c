"""The real-time contract over real gRPC: batching, dropping, resampling, events, numbering."""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from background import BackgroundServer
from helpers import (
    LiveStream,
    arithmetic_jpeg,
    assert_matches,
    frame_request,
    jpeg,
    png,
    render,
    stub_for,
)

from actionstream.resampling import FileClock, Resampler
from actionstream.service.clients.scrape import scrape as scrape_metrics
from actionstream.service.inference.action_tracker import ActionTracker
from actionstream.service.inference.clock_check import ClockCheck
from actionstream.service.inference.frames import FrameDecoder, FrameError
from actionstream.service.inference.model import OnnxStepModel
from actionstream.service.inference.streams import PendingFrame, Stream
from actionstream.service.trailers import REASON, SKIPPED_FRAMES, UNANSWERED_FRAMES
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

Reference = Callable[[Sequence[np.ndarray]], np.ndarray]
StartServer = Callable[..., BackgroundServer]


def scrape(server: BackgroundServer) -> dict[str, float]:
    assert server.metrics_port is not None
    return scrape_metrics(server.metrics_port)


def _stub(server: BackgroundServer) -> pb_grpc.ActionRecognitionStub:
    return stub_for(server.port)


def _decoded(data: bytes) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_batched_predictions_equal_unbatched(
    start_server: StartServer, reference: Reference, model: OnnxStepModel
) -> None:
    # A long batch wait makes the 8 streams' frames meet in one batch each step.
    server = start_server(max_batch=8, max_batch_wait_ms=40, metrics_port=0)
    stub = _stub(server)
    clips = [[jpeg(f) for f in render(10, seed=20 + i)] for i in range(8)]
    got: list[list[pb.Prediction]] = [[] for _ in clips]

    def run(i: int) -> None:
        live = LiveStream(stub, pb.StreamOptions(top_k=9))
        got[i] = [live.send(frame_request(data)) for data in clips[i]]
        live.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clips))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    labels = model.metadata.labels
    for clip, predictions in zip(clips, got, strict=True):
        expected = reference([_decoded(data) for data in clip])  # one stream, batch of 1
        assert len(predictions) == len(clip)
        for p, want in zip(predictions, expected, strict=True):
            probs = {s.label: s.probability for s in p.top}
            np.testing.assert_allclose([probs[label] for label in labels], want, atol=1e-4)
    m = scrape(server)
    mean_batch = m["actionstream_batch_size_sum"] / m["actionstream_batch_size_count"]
    assert mean_batch > 2, "the streams were not batched together; the test proves nothing"


@pytest.mark.parametrize(("streams", "max_batch", "overlapping"), [(8, 2, 2), (2, 4, 1)])
def test_a_second_batch_runs_beside_the_first_only_when_a_full_batch_waits(
    start_server: StartServer,
    model: OnnxStepModel,
    monkeypatch: pytest.MonkeyPatch,
    streams: int,
    max_batch: int,
    overlapping: int,
) -> None:
    # The real model, slowed down so that batches last long enough to meet.
    lock, running, most = threading.Lock(), [0], [0]
    step = model.step

    def slow_step(frames: np.ndarray, state: dict[str, np.ndarray]) -> object:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.03)
            return step(frames, state)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(model, "step", slow_step)
    server = start_server(max_batch=max_batch, decode_threads=2, max_batch_wait_ms=1)
    stub = _stub(server)
    clips = [[jpeg(f) for f in render(8, seed=50 + i)] for i in range(streams)]
    got: list[list[int]] = [[] for _ in clips]

    def run(i: int) -> None:
        live = LiveStream(stub, pb.StreamOptions())
        got[i] = [live.send(frame_request(data)).sequence for data in clips[i]]
        live.close()

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(run, range(streams)))
    # Every stream's frames answered in order, whichever batch thread stepped them.
    assert got == [list(range(1, 9))] * streams
    # 8 streams keep a full batch of 2 waiting while one runs: a second one starts.
    # 2 streams never fill a batch of 4: one batch at a time, so the next one grows.
    assert most[0] == overlapping


def test_an_overloaded_stream_drops_its_oldest_frames_and_says_so(
    start_server: StartServer,
) -> None:
    # The batcher waits a whole second before its first batch: by then all 20 frames
    # have arrived, and a stream keeps only its newest 2 (queue_frames).
    server = start_server(max_batch_wait_ms=1000, queue_frames=2, metrics_port=0)
    frames = [png(f) for f in render(20, seed=30)]
    predictions = list(_stub(server).StreamFrames(iter([frame_request(f) for f in frames])))
    assert [p.sequence for p in predictions] == [19, 20]
    assert [p.skipped_frames for p in predictions] == [18, 0]
    m = scrape(server)
    assert m["actionstream_frames_dropped_total{reason=overload}"] == 18
    assert m["actionstream_frames_received_total"] == 20
    assert m["actionstream_frames_processed_total"] == 2


def _until(server: BackgroundServer, key: str, value: float, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while scrape(server).get(key, 0.0) != value:
        assert time.monotonic() < deadline, f"{key} never reached {value}"
        time.sleep(0.01)


def test_a_stream_that_ends_while_in_line_costs_the_others_nothing(
    start_server: StartServer,
) -> None:
    # The batcher waits a second for its first batch to fill, so the first stream's
    # frame is still in line when its client cancels.
    server = start_server(max_batch_wait_ms=1000, metrics_port=0)
    stub = _stub(server)
    frames = [png(f) for f in render(2, seed=31)]
    gone = LiveStream(stub, pb.StreamOptions())
    gone.put(frame_request(frames[0]))
    _until(server, "actionstream_frames_received_total", 1)
    gone.cancel()
    _until(server, "actionstream_streams_ended_total{reason=cancelled}", 1)
    # The next stream is answered: the one that left the line took nothing with it.
    with ThreadPoolExecutor(1) as pool:
        live = LiveStream(stub, pb.StreamOptions())
        answer = pool.submit(live.send, frame_request(frames[1])).result(timeout=10)
        assert answer.sequence == 1
        live.close()
    m = scrape(server)
    assert m["actionstream_frames_dropped_total{reason=stream_ended}"] == 1
    assert m["actionstream_frames_processed_total"] == 1


def _nice(thread: threading.Thread) -> int:
    stat = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
@pytest.mark.parametrize("nice", [7, 0])
def test_decoding_and_inference_yield_the_cores_to_reading_and_answering(
    start_server: StartServer, nice: int
) -> None:
    server = start_server(inference_nice=nice, decode_threads=2, max_batch_wait_ms=50)
    stub = _stub(server)
    # Two streams at once, so the batch has frames for the second decode thread too.
    clips = [[frame_request(jpeg(f)) for f in render(6, seed=40 + i)] for i in range(2)]
    with ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda clip: len(list(stub.StreamFrames(iter(clip)))), clips))
    assert counts == [6, 6]
    threads = {t.name: t for t in threading.enumerate()}
    inference = [t for name, t in threads.items() if name.startswith("batch-")]
    assert len(inference) == 2, sorted(threads)
    # Counted from the process's own niceness (pytest itself may run under `nice`).
    own = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert {_nice(t) for t in inference} == {min(19, own + nice)}
    # The event loop (gRPC reading and writing) keeps the process's own priority.
    assert _nice(threads["actionstream-server"]) == own


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_decode_threads_are_niced_from_the_process_own_niceness() -> None:
    # A server started under `nice -n 10` with --inference-nice 5: its decode threads at
    # 15, not 5 (above the server itself); one made by a thread already lowered (as the
    # batch threads make the pools they lend to) at 15 too, not 20.
    script = (
        "import os, threading\n"
        "from actionstream.service.inference.batcher import _lower_priority\n"
        "def nice():\n"
        "    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())\n"
        "seen = []\n"
        "def child():\n"
        "    _lower_priority(5)\n"
        "    seen.append(nice())\n"
        "def parent():\n"
        "    _lower_priority(5)\n"
        "    seen.append(nice())\n"
        "    t = threading.Thread(target=child)\n"
        "    t.start(); t.join()\n"
        "t = threading.Thread(target=parent)\n"
        "t.start(); t.join()\n"
        "print(nice(), *seen)\n"
    )
    own = os.getpriority(os.PRIO_PROCESS, os.getpid())
    if own + 3 + 5 > 19:  # every value would be capped at 19: nothing left to tell apart
        pytest.skip(f"this process already runs at niceness {own}")
    out = subprocess.run(
        ["nice", "-n", "3", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    base = min(19, own + 3)
    assert out == [str(base), str(min(19, base + 5)), str(min(19, base + 5))]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
def test_a_sandbox_that_forbids_niceness_costs_the_priority_not_the_service(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def forbidden(*args: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", forbidden)
    server = start_server(inference_nice=5)
    clip = [frame_request(jpeg(f)) for f in render(4, seed=42)]
    assert len(list(_stub(server).StreamFrames(iter(clip)))) == 4
    assert "could not lower the priority of a decode thread" in caplog.text


def test_frames_are_resampled_to_the_model_rate_by_capture_time(
    stub: pb_grpc.ActionRecognitionStub,
) -> None:
    frames = [png(f) for f in render(12, seed=31)]
    # A 30 fps camera feeding the 10 fps model: every third frame, two skipped before each.
    t0 = 1_700_000_000_000_000
    fast = [frame_request(f, timestamp_us=t0 + i * 33_333) for i, f in enumerate(frames)]
    call = stub.StreamFrames(iter(fast))
    predictions = list(call)
    assert [p.sequence for p in predictions] == [1, 4, 7, 10]
    assert [p.skipped_frames for p in predictions] == [0, 2, 2, 2]
    # Frames 11 and 12 were skipped after the last prediction: the trailer counts them.
    assert dict(call.trailing_metadata())["actionstream-skipped-frames"] == "2"
    # A 5 fps camera is taken frame by frame, not sped up.
    slow = [frame_request(f, timestamp_us=t0 + i * 200_000) for i, f in enumerate(frames[:5])]
    assert [p.sequence for p in stub.StreamFrames(iter(slow))] == [1, 2, 3, 4, 5]


def test_resampler_handles_jitter_reordering_and_clock_resets() -> None:
    r = Resampler(fps=10)
    t0 = 1_700_000_000_000_000
    # Jitter of +-20 ms around a 10 fps grid: every frame taken.
    assert all(r.take(t0 + t) for t in (0, 120_000, 180_000, 310_000, 390_000))
    # A repeated or reordered timestamp is skipped...
    assert not r.take(t0 + 390_000)
    assert not r.take(t0 + 350_000)
    # ...a clock reset (more than a second back) starts over...
    assert r.take(t0 - 5_000_000)
    assert not r.take(t0 - 4_950_000)
    assert r.take(t0 - 4_900_000)
    # ...and so does a gap.
    assert r.take(t0 + 60_000_000)


def test_a_files_clock_goes_on_through_positions_that_jump_back() -> None:
    # Two 30 fps recordings joined end to end: the second's positions start at 0 again.
    # Its frames go on one frame after the first's, and are taken at 10 fps like them;
    # held at the first's last time, every one of them was thinned away.
    clock, r = FileClock(30.0), Resampler(fps=10)
    positions = [i * 1000 / 30 for i in range(150)] * 2  # ms, 5 s each
    times = [clock.next(p) for p in positions]
    assert times == sorted(times) and times[150] == pytest.approx(times[149] + 1 / 30)
    taken = [i for i, t in enumerate(times) if r.take(round(t * 1e6))]
    assert len(taken) == 100 and taken[-1] == 297
    # Small steps back (reordered frames) hold the time; a file with no positions after
    # its first frame is counted at its frame rate.
    held = FileClock(30.0)
    assert [held.next(p) for p in (0.0, 100.0, 80.0, 133.3)] == [0.0, 0.1, 0.1, 0.1333]
    counted = FileClock(25.0)
    assert [counted.next(0.0) for _ in range(3)] == [0.0, 0.04, 0.08]


def test_timestamps_too_slow_to_be_microseconds_are_judged_once() -> None:
    # Milliseconds in timestamp_us at 10 fps: 100 "us" a frame against 100 ms of arrivals.
    check = ClockCheck()
    for i in range(20):  # two seconds of frames before judging
        check.check(1_700_000_000_000 + i * 100, i * 0.1)
    assert not check.done
    with pytest.raises(FrameError, match=r"advanced 2\.0 ms over 2\.0 s") as refused:
        check.check(1_700_000_000_000 + 20 * 100, 2.0)
    assert refused.value.reason == "slow_timestamps" and check.done
    # Microseconds, or a file sent ten or a hundred times faster than real time: no refusal.
    for per_frame_us, per_frame_s in ((100_000, 0.1), (100_000, 0.01), (100_000, 0.001)):
        check = ClockCheck()
        for i in range(3000):
            check.check(i * per_frame_us, i * per_frame_s)
        assert check.done


@pytest.mark.parametrize(
    ("per_frame_us", "told", "reason"),
    [
        # Nanoseconds (process.hrtime, a GStreamer PTS) from a 30 fps camera: every frame
        # was taken, as if a model period apart, and the answers were mostly wrong.
        (
            33_333_333,
            r"advanced 2,000 s over 2\.0 s .*\(are these nanoseconds\?\)",
            "fast_timestamps",
        ),
        # A clock that never moves, told as such rather than as milliseconds.
        (0, r"did not advance over 2\.0 s .*\(a clock that does not move\?\)", "slow_timestamps"),
    ],
)
def test_timestamps_too_fast_or_frozen_are_told_so(
    per_frame_us: int, told: str, reason: str
) -> None:
    check = ClockCheck()
    t0 = 1_700_000_000_000_000
    with pytest.raises(FrameError, match=told) as refused:
        for i in range(61):  # 30 fps, judged at two seconds
            check.check(t0 + i * per_frame_us, i / 30)
    assert refused.value.reason == reason and check.done


def test_a_stream_whose_timestamps_look_like_milliseconds_is_told_so(
    start_server: StartServer,
) -> None:
    # Left alone, such a stream was answered for its first frame and then about once in
    # a thousand frames, the reason in the server's log only.
    server = start_server(metrics_port=0)
    image = png(render(1, seed=38)[0])
    honest = LiveStream(stub_for(server.port), pb.StreamOptions(stream_name="honest"))
    stream = LiveStream(stub_for(server.port), pb.StreamOptions(stream_name="cam-ms"))
    t0_ms = 1_700_000_000_000
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < ClockCheck.MIN_SECONDS + 0.3:
        stream.put(frame_request(image, timestamp_us=t0_ms + i * 100))  # ms, at 10 fps
        i += 1
        time.sleep(0.1)
    with pytest.raises(grpc.RpcError) as refused:
        stream.close()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "timestamp_us is in microseconds (are these milliseconds?)" in refused.value.details()
    assert honest.send(frame_request(image)).sequence == 1  # the other stream goes on
    honest.close()
    m = scrape_metrics(server.metrics_port)
    assert m["actionstream_frames_rejected_total{reason=slow_timestamps}"] == 1
    assert m["actionstream_streams_ended_total{reason=invalid_frame}"] == 1


def test_frames_without_a_sequence_number_continue_from_the_frame_before(
    stub: pb_grpc.ActionRecognitionStub,
) -> None:
    frames = [png(f) for f in render(6, seed=32)]
    numbers = [100, 0, 0, 200, 0, 7]
    requests = [frame_request(f, sequence=n) for f, n in zip(frames, numbers, strict=True)]
    assert [p.sequence for p in stub.StreamFrames(iter(requests))] == [100, 101, 102, 200, 201, 7]


def test_the_servers_numbers_wrap_to_one_after_the_largest_uint64(
    stub: pb_grpc.ActionRecognitionStub,
) -> None:
    # 2^64 does not fit the field: numbering on from the largest value once ended the stream
    # with a server error, and every other stream that shared its batch.
    frames = [png(f) for f in render(3, seed=34)]
    numbers = [2**64 - 1, 0, 0]
    requests = [frame_request(f, sequence=n) for f, n in zip(frames, numbers, strict=True)]
    assert [p.sequence for p in stub.StreamFrames(iter(requests))] == [2**64 - 1, 1, 2]


ANSWER = Stream.prediction


def _fault_in_the_answer(self: Stream, probs: np.ndarray, pending: PendingFrame) -> pb.Prediction:
    raise RuntimeError("injected fault")


def _fault_in_the_delivery(self: Stream, probs: np.ndarray, pending: PendingFrame) -> pb.Prediction:
    # A label the server keeps no counter for: counting it fails as the batch's answers are
    # handed out on the loop, one stream at a time.
    prediction = ANSWER(self, probs, pending)
    prediction.top[0].label = "injected fault"
    return prediction


@pytest.mark.parametrize(
    "fault",
    [_fault_in_the_answer, _fault_in_the_delivery],
    ids=["building-its-answer", "handing-its-answer-out"],
)
def test_a_server_fault_with_one_stream_ends_that_stream_alone(
    start_server: StartServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fault: Callable[[Stream, np.ndarray, PendingFrame], pb.Prediction],
) -> None:
    # A fault of our own, injected where the batch's per-stream work happens, for one stream.
    def faulty(self: Stream, probs: np.ndarray, pending: PendingFrame) -> pb.Prediction:
        if self.name == "doomed" and pending.sequence == 3:
            return fault(self, probs, pending)
        return ANSWER(self, probs, pending)

    monkeypatch.setattr(Stream, "prediction", faulty)
    # A long batch wait makes the four streams' frames meet in one batch each step.
    server = start_server(max_batch=4, max_batch_wait_ms=40, metrics_port=0)
    stub = _stub(server)
    names = ["doomed", "a", "b", "c"]
    clips = [[jpeg(f) for f in render(6, seed=40 + i)] for i in range(len(names))]
    answered: dict[str, list[int]] = {}
    errors: dict[str, grpc.RpcError] = {}

    def run(name: str, clip: list[bytes]) -> None:
        live = LiveStream(stub, pb.StreamOptions(stream_name=name))
        answered[name] = []
        try:
            for data in clip:
                answered[name].append(live.send(frame_request(data)).sequence)
            live.close()
        except grpc.RpcError as e:
            errors[name] = e

    with ThreadPoolExecutor(len(names)) as pool:
        list(pool.map(run, names, clips))

    assert answered == {"doomed": [1, 2], "a": [1, 2, 3, 4, 5, 6], "b": [1, 2, 3, 4, 5, 6],
                        "c": [1, 2, 3, 4, 5, 6]}  # fmt: skip
    assert list(errors) == ["doomed"]
    error = errors["doomed"]
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "internal server error" in error.details()
    assert "Error" not in error.details() and "injected" not in error.details()
    assert "injected fault" in caplog.text  # the traceback is the operator's
    metrics = scrape(server)
    assert metrics["actionstream_rpc_errors_total{code=INTERNAL,method=StreamFrames}"] == 1
    # The streams did share batches, so the fault met the others' frames in its batch.
    assert metrics["actionstream_batch_size_sum"] > metrics["actionstream_batch_size_count"]


def test_action_events_follow_the_smoothed_action(
    stub: pb_grpc.ActionRecognitionStub, model: OnnxStepModel
) -> None:
    from actionstream.training.synth import render_stream

    video, labels = render_stream(120, seed=33)  # 12 s: several actions one after another
    requests = [frame_request(png(f)) for f in video]
    predictions = list(stub.StreamFrames(iter(requests)))
    background = model.metadata.background_label or ""
    current, starts = background, 0
    for p in predictions:
        for event in p.events:
            if event.kind == pb.ActionEvent.KIND_END:
                assert event.label == current
                current = background
            else:
                assert event.kind == pb.ActionEvent.KIND_START
                assert current == background
                assert event.start_sequence == p.sequence
                current, starts = event.label, starts + 1
        assert p.action == current
    truth = {model.metadata.labels[int(i)] for i in labels} - {background}
    assert starts >= 2, "a 12 s feed of several actions started fewer than two"
    seen = {e.label for p in predictions for e in p.events}
    assert seen & truth


def test_tracker_hysteresis_does_not_flicker() -> None:
    labels = ("idle", "wave", "jump")
    tracker = ActionTracker(labels, "idle", fps=10)
    steady = np.array([0.05, 0.9, 0.05])
    borderline = np.array([0.45, 0.5, 0.05])  # around the middle of ENTER and EXIT
    events = [tracker.update(steady, i) for i in range(1, 11)]
    assert [e.kind for es in events for e in es] == [pb.ActionEvent.KIND_START]
    started = next(e.start_sequence for es in events for e in es)
    assert 2 <= started <= 5  # within half a second, not on the stream's first guess
    flicker = [tracker.update(borderline if i % 2 else steady, i) for i in range(11, 41)]
    assert not any(flicker), "a score hovering between the thresholds switched the action"
    ends = [tracker.update(np.array([0.9, 0.05, 0.05]), i) for i in range(41, 61)]
    kinds = [(e.kind, e.label, e.start_sequence) for es in ends for e in es]
    assert kinds == [(pb.ActionEvent.KIND_END, "wave", started)]
    assert tracker.action == "idle"


@pytest.mark.parametrize("background", ["idle", None])
def test_one_confident_first_frame_starts_no_action(background: str | None) -> None:
    # A stream's first predictions come from a zero state: one confident guess started
    # an action at its first frame, and ended it six frames later.
    tracker = ActionTracker(("idle", "wave", "jump"), background, fps=10)
    first = tracker.update(np.array([0.02, 0.96, 0.02]), 1)
    unsure = np.array([0.4, 0.3, 0.3])
    rest = [tracker.update(unsure, i) for i in range(2, 20)]
    assert first == [] and not any(rest)
    assert tracker.action == (background or "")


@pytest.mark.parametrize("bad", [b"\xff\xff\xff", b"\x12\x05\x1a\x03abc\xff"])
def test_a_malformed_message_is_invalid_argument_without_python_internals(
    start_server: StartServer, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    server = start_server(metrics_port=0)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.stream_stream(
            "/actionstream.v1.ActionRecognition/StreamFrames",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as err:
            list(raw(iter([frame_request(png(render(1, seed=34)[0])).SerializeToString(), bad])))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "request 2 is not a valid actionstream.v1.FrameRequest"
    assert "Traceback" not in caplog.text and "DecodeError" not in caplog.text
    # The operator's log says which stream it was and what its client was told.
    told = "malformed: INVALID_ARGUMENT: request 2 is not a valid actionstream.v1.FrameRequest"
    assert f"ended ({told})" in caplog.text
    m = scrape(server)
    assert m["actionstream_frames_rejected_total{reason=malformed}"] == 1
    # Received as what should have been a frame: rejected never outnumbers received.
    assert m["actionstream_frames_received_total"] == 2
    assert m["actionstream_streams_ended_total{reason=malformed}"] == 1
    assert m["actionstream_active_streams"] == 0


@pytest.mark.parametrize(
    ("requests", "refused"),
    [
        ([pb.FrameRequest(options=pb.StreamOptions(top_k=2)), "frame", pb.FrameRequest()], 3),
        # An empty first request is let pass (a client may send default options that
        # serialise to nothing); an empty later one is refused.
        ([pb.FrameRequest(), "frame", "frame", pb.FrameRequest()], 4),
        # Options count only in a stream's first request; later alone they carry nothing.
        (["frame", pb.FrameRequest(options=pb.StreamOptions(top_k=2))], 2),
    ],
)
def test_a_request_with_no_frame_is_refused_unless_it_opens_the_stream(
    start_server: StartServer, requests: list[pb.FrameRequest | str], refused: int
) -> None:
    server = start_server(metrics_port=0)
    image = png(render(1, seed=35)[0])
    outbox: queue.Queue[pb.FrameRequest | None] = queue.Queue()
    responses = _stub(server).StreamFrames(iter(outbox.get, None), timeout=10)
    answered = 0
    with pytest.raises(grpc.RpcError) as err:
        for request in requests:
            # A fresh capture time for each frame, so none is resampled away.
            outbox.put(frame_request(image) if request == "frame" else request)  # type: ignore[arg-type]
            if request == "frame":
                next(responses)  # each frame is answered before the next request goes
                answered += 1
        next(responses)
    outbox.put(None)
    assert answered == requests.count("frame")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        f"request {refused} carries no frame (only a stream's first request may come without one)"
    )
    m = scrape(server)
    assert m["actionstream_frames_rejected_total{reason=missing}"] == 1
    assert m["actionstream_frames_received_total"] == answered + 1
    assert m["actionstream_streams_ended_total{reason=malformed}"] == 1
    assert m["actionstream_active_streams"] == 0


def test_a_stream_refused_on_its_first_frame_is_logged_with_the_reason(
    stub: pb_grpc.ActionRecognitionStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    requests = [pb.FrameRequest(options=pb.StreamOptions(stream_name="cam-7"))]
    requests += [pb.FrameRequest(frame=pb.Frame(encoded=b"GIF89a"))]
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter(requests)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    told = "invalid_frame: INVALID_ARGUMENT: frame 1: not a JPEG or PNG image (6 bytes)"
    assert f"cam-7 refused ({told})" in caplog.text


def test_the_stream_name_is_escaped_and_bounded_in_logs(
    stub: pb_grpc.ActionRecognitionStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    name = "cam\n2026-01-01 INFO forged: line\x1b[31m" + "x" * 100_000
    requests = [pb.FrameRequest(options=pb.StreamOptions(stream_name=name))]
    requests += [frame_request(png(f)) for f in render(2, seed=35)]
    assert len(list(stub.StreamFrames(iter(requests)))) == 2
    lines = [r.getMessage() for r in caplog.records if "stream" in r.getMessage()]
    assert lines and all("\n" not in line and "\x1b" not in line for line in lines)
    assert all(len(line) < 300 for line in lines)
    assert any("cam\\n2026" in line for line in lines)


def _wait_for(server: BackgroundServer, key: str, value: float, timeout: float = 20) -> None:
    """Polls /metrics until `key` reaches `value` (the server counts as the call unwinds)."""
    deadline = time.monotonic() + timeout
    while scrape(server).get(key) != value:
        if time.monotonic() > deadline:
            pytest.fail(f"{key} never reached {value}: {scrape(server)}")
        time.sleep(0.05)


def test_a_stream_that_sends_nothing_holds_no_place_and_is_ended(
    start_server: StartServer,
) -> None:
    # Room for them all to wait (see the next tests for what happens past it).
    server = start_server(
        max_streams=1, max_waiting_calls=16, idle_timeout_seconds=0.5, metrics_port=0
    )
    stub = _stub(server)
    silent = [LiveStream(stub, pb.StreamOptions(stream_name=f"silent-{i}")) for i in range(5)]
    # Five calls that never send a frame do not lock out the one place there is.
    live = LiveStream(stub, pb.StreamOptions())
    live.send(frame_request(png(render(1, seed=36)[0])))
    assert scrape(server)["actionstream_active_streams"] == 1
    live.close()
    for call in silent:
        with pytest.raises(grpc.RpcError) as err:
            call.outcome()
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert err.value.details() == (
            "no frame for 0.5 s (idle_timeout_seconds); the stream was ended to free its slot "
            "among waiting calls"
        )
    _wait_for(server, "actionstream_streams_ended_total{reason=idle}", 5)
    assert scrape(server)["actionstream_active_streams"] == 0
    # One that sent a frame and then fell silent held the place, and gives it back.
    stalled = LiveStream(stub, pb.StreamOptions(stream_name="stalled"))
    stalled.send(frame_request(png(render(1, seed=37)[0])))
    with pytest.raises(grpc.RpcError) as err:
        stalled.outcome()
    assert err.value.details() == (
        "no frame for 0.5 s (idle_timeout_seconds); the stream was ended to free its place"
    )
    _wait_for(server, "actionstream_active_streams", 0)


def test_calls_waiting_for_a_first_frame_are_bounded_oldest_out(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Silent calls hold no place, but each costs memory until the idle timeout: a flood of
    # them would grow the server without bound. Past the cap the longest-waiting one goes.
    caplog.set_level("INFO")
    server = start_server(max_waiting_calls=3, idle_timeout_seconds=60, metrics_port=0)
    stub = _stub(server)
    silent = []
    for i in range(5):
        silent.append(LiveStream(stub, pb.StreamOptions(stream_name=f"silent-{i}")))
        # Each call seen by the server before the next opens, so "oldest" is known.
        if i < 3:
            _wait_for(server, "actionstream_waiting_calls", i + 1)
        else:
            _wait_for(server, "actionstream_streams_ended_total{reason=evicted}", i - 2)
    for call in silent[:2]:
        with pytest.raises(grpc.RpcError) as err:
            call.outcome()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 3 calls waiting for a first frame (max_waiting_calls)" in (
            err.value.details()
        )
    # The log says which camera was turned away, and what it was told.
    assert "silent-0 refused (evicted: RESOURCE_EXHAUSTED: no frame yet, and the server" in (
        caplog.text
    )
    # A camera that opens at the cap makes room (the oldest silent call goes) and is served.
    live = LiveStream(stub, pb.StreamOptions())
    live.send(frame_request(png(render(1, seed=39)[0])))
    assert live.close() == []
    _wait_for(server, "actionstream_streams_ended_total{reason=evicted}", 3)
    assert scrape(server)["actionstream_streams_ended_total{reason=completed}"] == 1
    with pytest.raises(grpc.RpcError) as err:
        silent[2].outcome()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert scrape(server)["actionstream_waiting_calls"] == 2  # it stopped waiting once it sent
    for call in silent[3:]:
        call.cancel()
    _wait_for(server, "actionstream_waiting_calls", 0)


def test_by_default_four_calls_per_place_may_wait_for_a_first_frame(
    start_server: StartServer,
) -> None:
    # Cameras reconnecting all at once open their calls before any first frame is read.
    server = start_server(max_streams=2, idle_timeout_seconds=60, metrics_port=0)
    stub = _stub(server)
    calls = [LiveStream(stub, pb.StreamOptions()) for _ in range(9)]
    _wait_for(server, "actionstream_streams_ended_total{reason=evicted}", 1)
    assert scrape(server)["actionstream_waiting_calls"] == 8
    for call in calls:
        call.cancel()
    _wait_for(server, "actionstream_waiting_calls", 0)


def test_a_client_that_stops_reading_is_ended_and_freed(start_server: StartServer) -> None:
    server = start_server(idle_timeout_seconds=0.5, metrics_port=0)
    # Without BDP probing the client's receive window stays at 64 KB, so a client that
    # reads nothing stalls the server's writes after a few hundred predictions.
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.port}", options=[("grpc.http2.bdp_probe", 0)]
    )
    image = png(render(1, seed=37)[0])
    stop = threading.Event()

    def requests() -> Iterator[pb.FrameRequest]:
        yield pb.FrameRequest(options=pb.StreamOptions(top_k=9, stream_name="deaf"))
        for _ in range(20_000):
            if stop.is_set():
                return
            yield frame_request(image)
            time.sleep(0.0005)

    # Unread so far; the deadline only keeps a regression from hanging the test.
    call = pb_grpc.ActionRecognitionStub(channel).StreamFrames(requests(), timeout=60)
    try:
        _wait_for(server, "actionstream_streams_ended_total{reason=not_reading}", 1, timeout=60)
        _wait_for(server, "actionstream_active_streams", 0)
        stop.set()
        # Reading again, the client gets what gRPC held for it, then why the call ended:
        # it had waited forever, the call open on both sides, when the sweep only cancelled.
        answered = accounted = 0
        with pytest.raises(grpc.RpcError) as ended:
            for prediction in call:
                answered += 1
                accounted += 1 + prediction.skipped_frames
        assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert ended.value.details().startswith("took no prediction for 0.5 s")
        trailer = dict(ended.value.trailing_metadata() or ())
        assert answered > 0 and trailer[REASON] == "not_reading"
        # Every frame the server read is in a prediction or the trailer: those dropped
        # behind while the frames that carried their count waited were in neither (the
        # trailer said 0 of ~280), and those still waiting are told apart, as lost.
        received = scrape(server)["actionstream_frames_received_total"]
        skipped, unanswered = int(trailer[SKIPPED_FRAMES]), int(trailer[UNANSWERED_FRAMES])
        assert accounted + skipped + unanswered == received
        assert skipped > 0 and unanswered > 0
        assert (
            scrape(server)[
                "actionstream_rpc_errors_total{code=DEADLINE_EXCEEDED,method=StreamFrames}"
            ]
            == 1
        )
    finally:
        stop.set()
        call.cancel()
        channel.close()


def test_a_message_over_grpcs_own_limit_is_counted(start_server: StartServer) -> None:
    server = start_server(max_frame_bytes=50_000, metrics_port=0)
    stub = _stub(server)
    good = frame_request(png(render(1, seed=38)[0]))
    huge = pb.FrameRequest(frame=pb.Frame(encoded=bytes(500_000)))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.StreamFrames(iter([good, huge])))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # grpc.aio shows the handler a refused message exactly as a cancelled call.
    _wait_for(server, "actionstream_streams_ended_total{reason=cancelled}", 1)
    m = scrape(server)
    assert m["actionstream_rpc_errors_total{code=CANCELLED,method=StreamFrames}"] == 1
    assert m["actionstream_active_streams"] == 0


def test_a_client_that_vanishes_is_counted_and_freed(start_server: StartServer) -> None:
    server = start_server(metrics_port=0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    live = LiveStream(pb_grpc.ActionRecognitionStub(channel), pb.StreamOptions())
    live.send(frame_request(png(render(1, seed=39)[0])))
    channel.close()  # the connection goes, without the call being ended first
    _wait_for(server, "actionstream_active_streams", 0)
    # grpc.aio shows a vanished client as a half-close followed by a cancellation; which
    # of the two the handler sees first is a race, so it is counted as one or the other.
    m = scrape(server)
    ended = [
        m.get(f"actionstream_streams_ended_total{{reason={r}}}", 0)
        for r in ("completed", "cancelled")
    ]
    assert sum(ended) == 1


def test_a_fault_in_the_heavy_lane_ends_only_that_stream(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every 64x64 test frame counts as heavy here, so each one takes the heavy lane.
    server = start_server(heavy_pixels=32 * 32, metrics_port=0)
    decode = FrameDecoder.decode
    faults = iter([True])

    def faulty_once(self: FrameDecoder, *args: Any) -> np.ndarray:
        if next(faults, False):
            raise RuntimeError("a decoder fault")
        return decode(self, *args)

    monkeypatch.setattr(FrameDecoder, "decode", faulty_once)
    stub = _stub(server)
    frames = [png(f) for f in render(3, seed=32)]
    with pytest.raises(grpc.RpcError) as ended:
        list(stub.StreamFrames(iter([frame_request(frames[0])]), timeout=10))
    assert ended.value.code() == grpc.StatusCode.INTERNAL
    # The lane goes on: the next stream's heavy frames are answered.
    answers = list(stub.StreamFrames(iter(frame_request(f) for f in frames[1:]), timeout=10))
    assert [a.sequence for a in answers] == [1, 2]


def test_heavy_frames_of_ended_streams_are_counted_not_decoded(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every 64x64 test frame takes the heavy lane here; each decode is made to take 1 s.
    # Two streams end while the lane decodes the first one's frame and the second's waits.
    decode = FrameDecoder.decode
    decoded: list[float] = []

    def slow(self: FrameDecoder, *args: Any) -> np.ndarray:
        time.sleep(1.0)
        decoded.append(time.monotonic())
        return decode(self, *args)

    monkeypatch.setattr(FrameDecoder, "decode", slow)
    server = start_server(heavy_pixels=32 * 32, metrics_port=0)
    stub = _stub(server)
    frames = [png(f) for f in render(3, seed=33)]
    streams = [LiveStream(stub, pb.StreamOptions()) for _ in range(2)]
    for live, frame in zip(streams, frames, strict=False):
        live.put(frame_request(frame))
    deadline = time.monotonic() + 10
    while scrape(server)["actionstream_frames_received_total"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for live in streams:
        live.cancel()
    while scrape(server)["actionstream_streams_ended_total{reason=cancelled}"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    # The lane goes on: a new stream's frame is answered, after the one decode in flight.
    answers = list(stub.StreamFrames(iter([frame_request(frames[2])]), timeout=10))
    assert [a.sequence for a in answers] == [1]
    assert len(decoded) == 2  # the second stream's frame was never decoded
    m = scrape(server)
    # Every frame received is processed, rejected or dropped, and said so.
    assert m["actionstream_frames_received_total"] == 3
    assert m["actionstream_frames_processed_total"] == 1
    assert m["actionstream_frames_dropped_total{reason=stream_ended}"] == 2


def _progressive_4k() -> bytes:
    """A 3840x2160 progressive JPEG of smooth gradients (about 360 KB): 36 ms to decode
    here even at the 1/8 scale a 64x64 model asks for, since every scan is entropy
    decoded in full; at 1/8 it would come out a mere 480x270."""
    import cv2

    y, x = np.mgrid[0:2160, 0:3840]
    image = np.stack([(x / 15) % 256, (y / 9) % 256, ((x + y) / 20) % 256], -1)
    return bytes(cv2.imencode(".jpg", image.astype(np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1])


def _arithmetic_1080p() -> bytes:
    """A 1920x1080 JPEG of noise, arithmetic-coded (about 460 KB): 53 ms to decode here at
    1/8 scale, where its Huffman-coded twin takes 5.5, and as many pixels as a
    --heavy-pixels image."""
    import cv2

    noise = np.random.default_rng(3).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    smooth = cv2.GaussianBlur(noise, (0, 0), 1.5)
    return arithmetic_jpeg(bytes(cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]))


def _png_of_compressed_text() -> bytes:
    """An 8x8 PNG with 20 zTXt chunks of 7.8 KB, each inflating to 7.9 MB of text, which
    libpng inflates as it reads them: about a second to decode as OpenCV reads it."""
    plain = png(np.full((8, 8, 3), 7, np.uint8))
    text = b"comment\0\0" + zlib.compress(b"\0" * 7_900_000, 9)
    chunk = struct.pack(">I", len(text)) + b"zTXt" + text
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + text))
    after_header = 8 + 25  # the signature, then IHDR's length, type, 13 bytes and CRC
    return plain[:after_header] + chunk * 20 + plain[after_header:]


@pytest.mark.parametrize(
    ("make_bomb", "interval_s", "heavy"),
    [
        # A few KB of PNG that decodes to 3840x2160: the server's cost, not the client's.
        (lambda: png(np.full((2160, 3840, 3), 7, np.uint8)), 0.002, True),
        # Sent less often, so that the test measures decoding, not loopback bandwidth.
        (_progressive_4k, 0.02, True),
        (_arithmetic_1080p, 0.02, True),
        # As many pixels as a --heavy-pixels image, but a PNG's: 37 ms to decode here.
        (lambda: png(np.full((1080, 1920, 3), 7, np.uint8)), 0.02, True),
        # Its cost was OpenCV's reading chunks that no pixel comes from; decoded without
        # them it costs its 64 pixels, and shares the batches as the honest frames do.
        (_png_of_compressed_text, 0.05, False),
    ],
    ids=[
        "4k-png",
        "4k-progressive-jpeg",
        "1080p-arithmetic-jpeg",
        "1080p-png",
        "png-of-compressed-text",
    ],
)
def test_expensive_frames_cannot_starve_other_streams(
    start_server: StartServer,
    reference: Reference,
    model: OnnxStepModel,
    make_bomb: Callable[[], bytes],
    interval_s: float,
    heavy: bool,
) -> None:
    import cv2

    server = start_server(metrics_port=0, queue_frames=2)
    stub = _stub(server)
    bomb = make_bomb()
    decoder = FrameDecoder(64, 64, max_bytes=8 << 20, max_pixels=3840 * 2160)
    start = time.perf_counter()
    if heavy:
        decoder.decode_image(bomb)  # as the server decodes it (a JPEG at reduced scale)
    else:  # as OpenCV decodes the whole file
        cv2.imdecode(np.frombuffer(bomb, np.uint8), cv2.IMREAD_COLOR)
    bomb_decode_s = time.perf_counter() - start
    stop = threading.Event()

    def attack() -> None:
        def flood() -> Iterator[pb.FrameRequest]:
            while not stop.is_set():
                yield frame_request(bomb)
                time.sleep(interval_s)

        with contextlib.suppress(grpc.RpcError):
            for _ in stub.StreamFrames(flood()):
                pass

    attackers = [threading.Thread(target=attack) for _ in range(4)]
    for t in attackers:
        t.start()
    try:
        time.sleep(0.5)  # the heavy lane is busy from here on
        clip = render(20, seed=40)
        honest = LiveStream(stub, pb.StreamOptions(top_k=9))
        predictions = [honest.send(frame_request(png(f))) for f in clip]
        honest.close()
    finally:
        stop.set()
        for t in attackers:
            t.join()
    assert_matches(predictions, reference(clip), model.metadata.labels)
    assert all(p.skipped_frames == 0 for p in predictions)
    # Had one of its frames shared a batch with a bomb, it would have waited for its decode.
    worst = max(p.latency_seconds for p in predictions)
    assert worst < bomb_decode_s, (worst, bomb_decode_s)
    if heavy:  # the lane's quarter core buys the attackers only some of their frames
        assert scrape(server)["actionstream_frames_dropped_total{reason=overload}"] > 0
