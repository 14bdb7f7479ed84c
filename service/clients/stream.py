"""`actionstream stream`: push a video file or camera to a server, print what it sees.

The client behaves like a camera: it reads frames with OpenCV, JPEG-encodes
them, and sends them over one StreamFrames call numbered 1, 2, 3, ... with
their capture time. A file is paced by its own timeline unless told to go as
fast as the server answers; a camera or live stream is sent as it hands out
frames. Latency is measured here, from handing a frame to gRPC to receiving
its prediction, so it includes the network both ways.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import cv2
import grpc
import numpy as np

from actionstream.decoding import NativeLines, cut_short, describe_shortfall
from actionstream.frame_labels import LabelsError, read_frame_labels
from actionstream.resampling import FileClock, Resampler
from actionstream.service.clients.output import events_text, prediction_record, print_json
from actionstream.service.clients.reconnection import Reconnection
from actionstream.service.clients.termination import Termination
from actionstream.service.config import StreamConfig
from actionstream.service.credentials import hide_credentials
from actionstream.service.sources.video_source import SourceError, VideoSource, is_url
from actionstream.service.trailers import skipped_in
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

# Called for each prediction with the frame's true label (if known) and its latency in ms.
PredictionCallback = Callable[[pb.Prediction, str | None, float], None]
# Pings that find a server gone without a word (its node lost, the network cut): no
# connection reset comes then, and without them the call would wait on TCP for many
# minutes. The server takes pings this often (grpc.http2.min_ping_interval_without_data_ms).
KEEPALIVE = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000)]
# After Ctrl-C, how long the source may take to finish a read before it is left behind.
INTERRUPTED_WAIT_S = 1.0
# Latencies kept for the summary's percentiles: a live camera streams for days, and a
# sample this large gives them within a fraction of a percent.
LATENCY_SAMPLE = 100_000


@dataclass(frozen=True)
class StreamSummary:
    """How one stream went, from the client's side."""

    frames_sent: int
    frames_answered: int
    accuracy: float | None  # top-1 over the scored frames; None without labels or none scored
    # Send -> prediction received; None if nothing was answered. Over every answered frame
    # up to LATENCY_SAMPLE of them, then over a uniform sample of that many.
    p50_ms: float | None
    p99_ms: float | None
    interrupted: bool = False  # stopped with Ctrl-C before the source ended
    frames_scored: int | None = None  # answered frames the labels cover; None without labels
    frames_skipped: int = 0  # sent, and skipped by the server (resampled to the model's rate)
    reconnects: int = 0  # new calls that answered, after the server went away
    # False when Ctrl-C left the source inside an OpenCV call (a stalled network source
    # waits out OpenCV's 30-s timeout): end the process with os._exit, as `stream` does,
    # since an interpreter that exits under that thread aborts.
    source_released: bool = True
    frames_read: int = 0  # from the source
    frames_unsent: int = 0  # read, and not sent: above the model's rate, without pacing

    @property
    def frames_lost(self) -> int:
        """Read and meant to be sent, and neither answered nor reported skipped: in flight,
        or being read, when a call ended."""
        return max(
            0, self.frames_read - self.frames_unsent - self.frames_answered - self.frames_skipped
        )


class StreamError(Exception):
    """An expected failure (bad source, unreachable server, refused stream), in words;
    `summary` is how the stream went until then, when some of it was answered.
    `source_released` is False when a read stalled on a network source was not waited
    out: the process must then end with os._exit (see StreamSummary)."""

    def __init__(self, message: str, summary: StreamSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary
        self.source_released = True


def read_labels(path: Path) -> dict[int, str]:
    """Ground truth from a `frame,label` CSV (actionstream/frame_labels.py); raises
    StreamError, in one line, for a file that cannot be read or is not such a CSV."""
    try:
        return read_frame_labels(path)
    except LabelsError as e:
        raise StreamError(str(e)) from None


class _Feed:
    """The source, read and encoded on gRPC's request thread, closed on the caller's.

    gRPC pulls the requests on a daemon thread of its own that nothing joins, and
    drops the request generator there once the call is over. OpenCV lets go of the
    GIL inside read, encode and release; a thread still inside one when the
    interpreter exits is ended as it takes the GIL back, by a forced unwind through
    OpenCV's C++ frames: std::terminate, "terminate called without an active
    exception", SIGABRT. So every OpenCV call on the source holds this lock, and
    `close` (the caller's thread, before stream_source returns or raises) waits out
    the one in flight, releases the capture, and refuses any later one.
    """

    def __init__(self, source: VideoSource) -> None:
        self._source = source
        self.fps = source.opened_fps
        self.frame_count = source.frame_count
        # A file's frames are timed by its own timeline, as training and the server's
        # WatchSource time them; a camera's or live stream's by when they are read. (A
        # file that reports no frame rate, rare, is counted at FFmpeg's own 25 fps here,
        # at the model's rate there: this client does not always ask for it.)
        self._clock = None if source.live else FileClock(self.fps or 25.0)
        self._lock = threading.Lock()
        self._closed = False
        self._left = False  # close gave up waiting: the call in flight releases the source
        # Frames read so far, numbered as read under the lock: the request generators of an
        # ended call and of the next can both be reading.
        self.frames_read = 0
        self.last_s = 0.0  # a file's time at the last frame read
        self.ran_out = False  # the source ended (not the feed closed)

    def read(self) -> tuple[int, np.ndarray, float | None] | None:
        """The next frame's number (1, 2, ... over the whole source), the frame and, for a
        file, its time into the file in seconds; None when the source has ended or the
        feed is closed."""
        with self._lock:
            if self._closed:
                return None
            read = self._source.read_positioned()
            self._release_if_left()
            if read is None:
                self.ran_out = True
                return None
            self.frames_read += 1
            number = self.frames_read
            image, position_ms = read
            file_s = None if self._clock is None else self._clock.next(position_ms)
            if file_s is not None:
                self.last_s = file_s
        return number, image, file_s

    def encode(self, image: np.ndarray, quality: int, sequence: int) -> bytes | None:
        """Frame `sequence` as JPEG; None when the feed is closed."""
        with self._lock:
            if self._closed:
                return None
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            self._release_if_left()
        if not ok:
            raise StreamError(f"frame {sequence}: OpenCV could not JPEG-encode it")
        return jpeg.tobytes()

    def close(self, wait_s: float | None = None) -> bool:
        """Waits for a read or encode in flight (OpenCV's own timeouts bound a stuck
        camera or URL), then releases the source; again is a no-op. With `wait_s`, gives
        up after that long and returns False: the call in flight releases the source
        when it returns, and the process must not exit normally before then. Once one
        close has given up, a later one does not wait either."""
        if self._left:
            return self._closed
        if not self._lock.acquire(timeout=-1 if wait_s is None else wait_s):
            self._left = True
            # The call may have returned between the wait and the flag: then it is ours.
            if not self._lock.acquire(blocking=False):
                return False
        try:
            self._release_if_left(always=True)
        finally:
            self._lock.release()
        return True

    def _release_if_left(self, always: bool = False) -> None:
        # Under the lock.
        if (always or self._left) and not self._closed:
            self._closed = True
            self._source.close()


def _spans(frames: list[int], most: int = 3) -> str:
    """Sorted frame numbers as runs: "3, 7-9, 100-119" (the first `most` runs, then "...")."""
    runs: list[list[int]] = []
    for i in frames:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:most])
    return text + (", ..." if len(runs) > most else "")


def _warn_uncovered(path: str, truth: dict[int, str], frames: int) -> None:
    """Warns, before streaming, of source frames 0..frames-1 the labels leave out.

    A warning, not a refusal: the count is the container's, which some estimate from
    duration and frame rate, and a frame that is never read needs no label. The
    summary says how many answered frames were scored.
    """
    missing = [i for i in range(frames) if i not in truth]
    if missing:
        print(
            f"warning: {path}: no label for {len(missing)} of the {frames} source frames to "
            f"stream (frame {_spans(missing)}); they will not be scored",
            file=sys.stderr,
        )


def _warn_if_cut_short(source: str, feed: _Feed) -> None:
    """Warns when a local file's frames ended clearly before the count its container
    declares (a copy or download cut short), as training does (actionstream/decoding.py).
    FFmpeg's own lines are not held back here, where they come on gRPC's thread while
    this one prints: so only a container that lists its frames (MP4/MOV, AVI) is judged,
    by its count alone."""
    path = Path(source)
    if feed.frame_count is None or feed.fps is None or is_url(source) or not path.is_file():
        return
    said = NativeLines()  # none held: containers whose count is an estimate are not judged
    if cut_short(path, feed.frame_count, feed.frames_read, feed.fps, feed.last_s, said):
        shortfall = describe_shortfall(feed.frame_count, feed.frames_read, feed.fps, feed.last_s)
        print(
            f"warning: {source}: cut short or damaged: {shortfall}; streamed the frames it has",
            file=sys.stderr,
            flush=True,
        )


def _check_names(path: str, truth: dict[int, str], model_labels: Sequence[str]) -> None:
    """Refuses labels the model cannot predict, as `actionstream evaluate` does."""
    unknown = sorted(set(truth.values()) - set(model_labels))
    if unknown:
        raise StreamError(
            f"{path}: label(s) {', '.join(map(repr, unknown))} are not the model's "
            f"(it knows {', '.join(model_labels)})"
        )


def stream_source(
    cfg: StreamConfig, on_prediction: PredictionCallback | None = None
) -> StreamSummary:
    """Streams `cfg.source` to `cfg.target` and returns the summary; raises StreamError.

    With `cfg.labels`, the CSV is checked before any frame is sent: every label must
    be one of the model's; where the source says how many frames it has, frames to be
    streamed without a label are warned of.
    """
    truth = read_labels(Path(cfg.labels)) if cfg.labels else None
    source = _open(cfg.source)
    if source is None:  # Ctrl-C while it opened
        return StreamSummary(0, 0, None, None, None, interrupted=True, source_released=False)
    feed = _Feed(source)
    try:
        with grpc.insecure_channel(cfg.target, options=KEEPALIVE) as channel:
            return _Session(cfg, feed, truth, channel, on_prediction).run()  # it closes the feed
    except KeyboardInterrupt:
        feed.close(0.0)  # Ctrl-C again: the caller must not wait, nor exit normally
        raise
    except BaseException:
        feed.close()  # on this thread, before raising: see _Feed
        raise


def _open(name: str) -> VideoSource | None:
    """The opened source; None after Ctrl-C, which a URL's open would hold off for up to
    OpenCV's 30-s timeout were it on this thread. Raises StreamError if it cannot open."""
    opened: Future[VideoSource] = Future()
    lock = threading.Lock()  # whoever comes second closes a source opened too late
    abandoned = False

    def open_source() -> None:
        try:
            source = VideoSource(name)
        except BaseException as e:
            opened.set_exception(e)
            return
        with lock:
            opened.set_result(source)
            if abandoned:
                source.close()

    threading.Thread(target=open_source, name="source-open", daemon=True).start()
    try:
        return opened.result()
    except SourceError as e:
        raise StreamError(f"cannot open source: {e}") from None
    except KeyboardInterrupt:
        with lock:
            abandoned = True
            if opened.done() and opened.exception() is None:
                opened.result().close()
        return None


class _Latencies:
    """Every latency up to `size` of them, then a uniform sample of that many (reservoir
    sampling), so that a stream of any length keeps its percentiles in bounded memory."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._kept: list[float] = []
        self._seen = 0
        self._random = random.Random(0)

    def add(self, ms: float) -> None:
        self._seen += 1
        if len(self._kept) < self._size:
            self._kept.append(ms)
            return
        slot = self._random.randrange(self._seen)
        if slot < self._size:
            self._kept[slot] = ms

    def percentiles(self, qs: list[float]) -> list[float] | None:
        if not self._kept:
            return None
        return [float(v) for v in np.percentile(self._kept, qs)]


class _Session:
    """One `stream` run: the calls it opens to the server, one after another when the
    server goes away, and what their answers add up to."""

    def __init__(
        self,
        cfg: StreamConfig,
        feed: _Feed,
        truth: dict[int, str] | None,
        channel: grpc.Channel,
        on_prediction: PredictionCallback | None,
    ) -> None:
        self._cfg = cfg
        self._feed = feed
        self._truth = truth
        self._on_prediction = on_prediction
        self._stub = pb_grpc.ActionRecognitionStub(channel)
        # Besides UNAVAILABLE once frames were answered, while reconnecting: a server
        # that is full (every place taken, as the pods left during a rollout may be).
        self._reconnection = Reconnection(
            cfg.reconnect_seconds, frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED})
        )
        self._frame_count = feed.frame_count
        self._warned_uncovered = False
        self._start_us = time.time_ns() // 1000
        self._done = threading.Event()  # the whole stream is over: every request generator stops
        self._source_ended = threading.Event()
        # Set by each answer, taken by the request generator when it paces itself by them
        # (--no-realtime); one is all it waits for, so it holds at most one.
        self._answer_came: queue.Queue[None] = queue.Queue(maxsize=1)
        # Written by the request generators on gRPC's threads: one a call, and an ended
        # call's can still be finishing a read when the next starts (see _requests).
        self._played_s = 0.0  # how far into a file, by its timeline
        # (sequence, when sent) of the frames not answered yet, oldest first: the server
        # answers a stream's frames in order, so an answer settles every frame before it.
        self._in_flight: collections.deque[tuple[int, float]] = collections.deque()
        self._sent = self._last_sent = 0
        # What went wrong in a request generator, which gRPC would report as the server's
        # error (UNKNOWN, "Exception iterating requests!"): raised by run() instead.
        self._request_failure: BaseException | None = None
        # On this thread, from the answers.
        self._answered = self._last_answered = 0
        self._latencies = _Latencies(LATENCY_SAMPLE)
        self._correct = self._scored = self._skipped = self._reconnects = 0
        self._calls_answered = 0
        self._unsent = 0
        self._call_answered = False  # the call now open has answered a frame
        self._interrupted = False
        self._released = True

    def run(self) -> StreamSummary:
        """Streams until the source ends; raises StreamError. Closes the feed."""
        call = None
        failure: StreamError | None = None
        try:
            while True:
                call_over = threading.Event()
                self._call_answered = False
                try:
                    call = self._stub.StreamFrames(self._requests(self._model_rate(), call_over))
                    for prediction in call:
                        self._answer(prediction)
                    self._skipped += skipped_in(call.trailing_metadata())
                    break
                except grpc.RpcError as e:
                    call_over.set()
                    if self._request_failure is not None or self._after_failed_call(e):
                        break
            if self._request_failure is not None:
                raise self._request_failure
        except KeyboardInterrupt:
            if call is not None:
                call.cancel()
            self._interrupted = True
        except grpc.RpcError as e:
            streamed = self._answered > 0
            failure = StreamError(
                _describe(e, self._cfg.target, streamed), self.summary() if streamed else None
            )
        except StreamError as e:
            # Such as a new call's model lacking a label of the CSV: what was answered
            # before still counts.
            if e.summary is None and self._answered:
                e.summary = self.summary()
            failure = e
        finally:
            self._done.set()
            # After Ctrl-C or a failure, a read stuck on a stalled source is not waited out
            # (OpenCV gives up after 30 s): the user hears at once; after a second Ctrl-C,
            # not at all (the summary is still printed).
            try:
                wait_s = INTERRUPTED_WAIT_S if self._interrupted or failure else None
                self._released = self._feed.close(wait_s)
            except KeyboardInterrupt:
                self._interrupted = True
                self._released = self._feed.close(0.0)
        if failure is not None:
            failure.source_released = self._released
            raise failure
        return self.summary()

    def _model_rate(self) -> Resampler | None:
        """Without pacing, the resampler that keeps to the frames the server would take at
        the model's rate. Asked on every call: after a rollout the server may run another
        model. With --labels, the model's labels are checked on every call too."""
        if self._truth is None and self._cfg.realtime:
            return None
        info = self._stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        if self._truth is not None and self._cfg.labels is not None:
            _check_names(self._cfg.labels, self._truth, info.labels)
            # Once, after the names passed: a refused CSV is one line, not a warning too.
            if self._frame_count is not None and not self._warned_uncovered:
                self._warned_uncovered = True
                most = self._cfg.max_frames or self._frame_count
                _warn_uncovered(self._cfg.labels, self._truth, min(self._frame_count, most))
        return None if self._cfg.realtime else Resampler(info.fps)

    def _requests(
        self, resampler: Resampler | None, call_over: threading.Event
    ) -> Iterator[pb.FrameRequest]:
        """One call's requests. Runs on a gRPC thread, which may still be here after the
        call is over; it touches the source only through the feed, which stops it once
        closed. A failure here (a frame OpenCV cannot encode, a source that breaks) ends
        the requests, so that the server answers what it has and ends the call, and is
        kept for run() to raise."""
        try:
            yield from self._frames(resampler, call_over)
        except StreamError as e:
            self._request_failure = e
        except cv2.error as e:
            self._request_failure = StreamError(f"reading the source failed: {e}")
        except Exception as e:
            self._request_failure = e

    def _frames(
        self, resampler: Resampler | None, call_over: threading.Event
    ) -> Iterator[pb.FrameRequest]:
        """With `resampler` (as fast as the server answers): one frame in flight, and only
        the frames the server would take, so none is dropped and none waits."""
        cfg = self._cfg
        name = hide_credentials(cfg.source)  # a camera's password stays here
        yield pb.FrameRequest(options=pb.StreamOptions(top_k=cfg.top_k, stream_name=name))
        # Paced from where this call starts: after a reconnection a file goes on at its
        # rate rather than rushing to catch up on the time the server was away.
        start = time.perf_counter() - self._played_s
        while cfg.max_frames == 0 or self._feed.frames_read < cfg.max_frames:
            read = self._feed.read()
            if read is None:
                self._source_ended.set()
                if self._feed.ran_out:
                    _warn_if_cut_short(cfg.source, self._feed)
                return
            # Numbered as read, so that frame n of the source is sequence n whatever is
            # lost: --labels scores by it.
            sequence, image, file_s = read
            if self._done.is_set() or call_over.is_set():
                return  # a frame read as its call ended is lost, as a live camera's would be
            # Only a file is paced: a camera or live stream hands out frames as it makes
            # them, and any wait here would put the stream behind it (the rate it reports
            # may be made up: 25 fps for MJPEG over HTTP, whatever it sends).
            if cfg.realtime and file_s is not None:
                self._played_s = file_s
                time.sleep(max(0.0, start + file_s - time.perf_counter()))
            timestamp_us = self._capture_us(file_s)
            if resampler is not None and not resampler.take(timestamp_us):
                self._unsent += 1
                continue
            jpeg = self._feed.encode(image, cfg.jpeg_quality, sequence)
            if jpeg is None or self._done.is_set() or call_over.is_set():
                return
            frame = pb.Frame(encoded=jpeg, sequence=sequence, timestamp_us=timestamp_us)
            self._in_flight.append((sequence, time.perf_counter()))
            self._sent += 1
            self._last_sent = sequence
            yield pb.FrameRequest(frame=frame)
            while resampler is not None and not (self._done.is_set() or call_over.is_set()):
                with contextlib.suppress(queue.Empty):
                    self._answer_came.get(timeout=0.1)
                    break
        self._source_ended.set()  # --max-frames reached

    def _capture_us(self, file_s: float | None) -> int:
        # A file's frames keep their own timeline, sent in real time or faster; live, a
        # frame was captured when it was read.
        if file_s is not None:
            return self._start_us + round(file_s * 1e6)
        return time.time_ns() // 1000

    def _answer(self, prediction: pb.Prediction) -> None:
        self._reconnection.back()
        if not self._call_answered:
            # A new stream, from a zero state, once it answers: tries that failed before
            # reaching one (GetModelInfo or StreamFrames refused while away) are not.
            self._call_answered = True
            if self._calls_answered:
                self._reconnects += 1
                print(
                    "actionstream stream: reconnected; the new stream answers (from a zero state)",
                    file=sys.stderr,
                    flush=True,
                )
            self._calls_answered += 1
        sequence = prediction.sequence
        while self._in_flight and self._in_flight[0][0] < sequence:
            self._in_flight.popleft()  # skipped by the server, or lost with an earlier call
        if not self._in_flight or self._in_flight[0][0] != sequence:
            raise StreamError(f"the server answered frame {sequence}, which was not sent")
        latency_ms = (time.perf_counter() - self._in_flight.popleft()[1]) * 1e3
        label = self._truth.get(sequence - 1) if self._truth is not None else None
        if label is not None:
            self._scored += 1
            self._correct += prediction.top[0].label == label
        self._answered += 1
        self._last_answered = sequence
        self._latencies.add(latency_ms)
        self._skipped += prediction.skipped_frames
        with contextlib.suppress(queue.Full):
            self._answer_came.put_nowait(None)
        if self._on_prediction is not None:
            self._on_prediction(prediction, label, latency_ms)

    def _after_failed_call(self, e: grpc.RpcError) -> bool:
        """Waits for the next try, or raises: `e` itself when it is not worth another
        call, StreamError when the outage has lasted --reconnect-seconds. A source that
        had ended has nothing left to send: True when the server had answered its last
        frame, so that the stream is complete however the call ended."""
        if isinstance(e, grpc.Call):  # frames the server skipped after its last answer
            self._skipped += skipped_in(e.trailing_metadata())
        if self._source_ended.is_set() and self._all_answered():
            print(
                f"actionstream stream: every frame was answered or skipped, then the call "
                f"ended with {e.code().name}: {e.details()}",
                file=sys.stderr,
                flush=True,
            )
            return True
        more_to_send = self._answered > 0 and not self._source_ended.is_set()
        if not self._reconnection.may_try(e.code(), more_to_send):
            raise e
        limit_s = self._reconnection.limit_s
        if self._reconnection.begins_outage():
            print(
                f"actionstream stream: the server ended the stream ({e.code().name}: "
                f"{e.details()}); reconnecting for up to {limit_s:g} s (a new stream "
                "starts from a zero state)",
                file=sys.stderr,
                flush=True,
            )
        if self._reconnection.over:
            raise StreamError(
                f"the server went away mid-stream and no new stream could be opened within "
                f"{limit_s:g} s; gave up reconnecting (last: {e.code().name}: {e.details()})",
                self.summary(),
            ) from None
        self._reconnection.wait()
        return False

    def _all_answered(self) -> bool:
        """Every frame sent was answered or skipped by the server: its last was answered,
        or the skipped ones it reported make up the rest."""
        if not self._answered:
            return False
        return (
            self._last_answered == self._last_sent or self._answered + self._skipped >= self._sent
        )

    def summary(self) -> StreamSummary:
        p50, p99 = self._latencies.percentiles([50, 99]) or (None, None)
        return StreamSummary(
            frames_sent=self._sent,
            frames_answered=self._answered,
            accuracy=self._correct / self._scored if self._scored else None,
            p50_ms=p50,
            p99_ms=p99,
            interrupted=self._interrupted,
            frames_scored=self._scored if self._truth is not None else None,
            frames_skipped=self._skipped,
            reconnects=self._reconnects,
            source_released=self._released,
            frames_read=self._feed.frames_read,
            frames_unsent=self._unsent,
        )


def _describe(error: grpc.RpcError, target: str, streamed: bool = False) -> str:
    code, details = error.code(), error.details()
    if code == grpc.StatusCode.UNAVAILABLE and not streamed:
        return f"cannot reach the server at {target}: {details}"
    return f"the server ended the stream with {code.name}: {details}"


def _print_prediction(prediction: pb.Prediction, truth: str | None, latency_ms: float) -> None:
    best = prediction.top[0]
    line = f"frame {prediction.sequence:6d}  {best.label:>12s} {best.probability:5.2f}"
    if truth is not None:
        line += f"  truth {truth:>12s} {'✓' if truth == best.label else '✗'}"
    print(f"{line}  {latency_ms:6.1f} ms{events_text(prediction)}", flush=True)


def _print_prediction_json(prediction: pb.Prediction, truth: str | None, latency_ms: float) -> None:
    record = prediction_record(prediction) | {"latency_ms": latency_ms}
    if truth is not None:
        record["truth"] = truth
    print_json("prediction", record)


def _print_summary_json(summary: StreamSummary, error: str | None = None) -> None:
    # Every count the summary has, by its field's name; not whether the source was let go
    # (what the process does about it is its exit).
    record: dict[str, object] = dataclasses.asdict(summary)
    del record["source_released"]
    record["frames_lost"] = summary.frames_lost
    if error is not None:
        record["error"] = error
    print_json("summary", record)


def print_summary(summary: StreamSummary) -> None:
    frames = f"frames: {summary.frames_sent} sent, {summary.frames_answered} answered"
    if summary.frames_unsent:
        frames = (
            f"frames: {summary.frames_read} read, {summary.frames_unsent} not sent (above the "
            f"model's frame rate, which the server would skip), {summary.frames_sent} sent, "
            f"{summary.frames_answered} answered"
        )
    if summary.frames_lost:
        frames += f", {summary.frames_lost} lost when a call ended"
    if summary.frames_skipped:
        frames += (
            f", {summary.frames_skipped} skipped by the server (above the model's frame rate, "
            "or behind when it was busy)"
        )
    print(frames)
    if summary.reconnects:
        print(
            f"reconnected: {summary.reconnects} new call(s) after the server went away "
            "(each new stream started from a zero state)"
        )
    scored, answered = summary.frames_scored, summary.frames_answered
    if scored is not None and answered:
        if summary.accuracy is None:
            print(f"accuracy: not scored: none of the {answered} answered frames has a label")
        else:
            unlabelled = f"; {answered - scored} had no label" if scored < answered else ""
            print(
                f"accuracy: {summary.accuracy:.1%} (top-1, per frame; "
                f"scored {scored} of {answered} answered frames{unlabelled})"
            )
    if summary.p50_ms is not None and summary.p99_ms is not None:
        print(
            f"latency (send to prediction): p50 {summary.p50_ms:.1f} ms, "
            f"p99 {summary.p99_ms:.1f} ms"
        )


def run_stream(cfg: StreamConfig) -> int:
    """`actionstream stream`: 0 when the source was streamed to the end, 1 on failure,
    130 after Ctrl-C and 143 after SIGTERM (both with the summary so far)."""
    with Termination() as stop:
        try:
            return _run_stream(cfg, stop)
        except KeyboardInterrupt:  # while the summary was printed, say
            print("actionstream stream: interrupted", file=sys.stderr, flush=True)
            return stop.code


def _run_stream(cfg: StreamConfig, stop: Termination) -> int:
    each = _print_prediction_json if cfg.json else _print_prediction
    try:
        summary = stream_source(cfg, None if cfg.quiet else each)
    except KeyboardInterrupt:  # a second Ctrl-C, while the source was being let go
        print("actionstream stream: interrupted", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(stop.code)
    except StreamError as e:
        if e.summary is not None:
            if cfg.json:
                _print_summary_json(e.summary, str(e))
            else:
                print_summary(e.summary)
        print(f"actionstream stream: {e}", file=sys.stderr)
        leave_if_source_held(e.source_released, "actionstream stream", 1)
        return 1
    if cfg.json:
        _print_summary_json(summary)
    else:
        print_summary(summary)
    leave_if_source_held(summary.source_released, "actionstream stream", stop.code)
    return stop.code if summary.interrupted else 0


def leave_if_source_held(released: bool, prog: str, code: int) -> None:
    """Ends the process at once with `code` when Ctrl-C or a failure left the source
    inside an OpenCV call: a normal exit would unwind under that thread, and abort."""
    if released:
        return
    print(
        f"{prog}: stopped without waiting for the source, which was still opening or "
        "reading (OpenCV gives up on a stalled one after 30 s)",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
