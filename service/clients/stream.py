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
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import grpc

from actionstream.decoding import NativeLines, ffmpeg_lines_kept
from actionstream.frame_labels import LabelsError, read_frame_labels
from actionstream.resampling import Resampler
from actionstream.service import opencv_log
from actionstream.service.clients.call_failure import CallFailure
from actionstream.service.clients.latencies import Latencies
from actionstream.service.clients.output import events_text, prediction_record, print_json, report
from actionstream.service.clients.reconnection import KEEPALIVE, Next, Reconnection
from actionstream.service.clients.sent_source import SentSource, open_source, warn_if_damaged
from actionstream.service.clients.stream_summary import (
    StreamError,
    StreamSummary,
    print_summary,
    summary_record,
)
from actionstream.service.clients.termination import Termination, is_stop
from actionstream.service.clients.truth import check_names, warn_uncovered
from actionstream.service.config import StreamConfig
from actionstream.service.credentials import hide_credentials
from actionstream.service.sources.video_source import VideoSource, is_url
from actionstream.service.trailers import skipped_in
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

__all__ = [
    "KEEPALIVE",
    "StreamError",
    "StreamSummary",
    "leave_if_source_held",
    "print_summary",
    "read_labels",
    "run_stream",
    "stream_source",
]

# Called for each prediction with the frame's true label (if known) and its latency in ms.
PredictionCallback = Callable[[pb.Prediction, str | None, float], None]
# `--source -`: a video piped in (its frames timed as a file's, by its own timeline).
STDIN = "/dev/stdin"
# After Ctrl-C, how long the source may take to finish a read before it is left behind.
INTERRUPTED_WAIT_S = 1.0
# Latencies kept for the summary's percentiles: a live camera streams for days, and a
# sample this large gives them within a fraction of a percent.
LATENCY_SAMPLE = 100_000


def read_labels(path: Path) -> dict[int, str]:
    """Ground truth from a `frame,label` CSV (actionstream/frame_labels.py); raises
    StreamError, in one line, for a file that cannot be read or is not such a CSV."""
    try:
        return read_frame_labels(path)
    except LabelsError as e:
        raise StreamError(str(e)) from None


def stream_source(
    cfg: StreamConfig, on_prediction: PredictionCallback | None = None
) -> StreamSummary:
    """Streams `cfg.source` to `cfg.target` and returns the summary; raises StreamError.

    With `cfg.labels`, the CSV is checked before any frame is sent: every label must
    be one of the model's; where the source says how many frames it has, frames to be
    streamed without a label are warned of.
    """
    truth = read_labels(Path(cfg.labels)) if cfg.labels else None
    name = STDIN if cfg.source == "-" else cfg.source
    if name == STDIN and sys.stdin.isatty():
        raise StreamError("--source -: nothing is piped in (standard input is a terminal)")
    # A local file opens at once, its decoder's lines held back for the open alone
    # (open_source); a URL's open may last 30 s, and joins the run's block below.
    local = not is_url(name) and Path(name).is_file()
    source = open_source(name) if local else None
    # FFmpeg's lines about a damaged file or stream come on the thread that opens a URL,
    # then on gRPC's, which reads the source, while this one prints: they are kept from
    # the terminal and told in one line at the end (a stream of garbage gave hundreds, a
    # line a frame). Told whether the run succeeds or fails (before its error), not after
    # Ctrl-C.
    said = NativeLines()
    feed: SentSource | None = None
    interrupted = False
    try:
        with ffmpeg_lines_kept() as said:
            if not local:
                source = _open_keeping(name)
            if source is None:  # Ctrl-C while it opened
                return StreamSummary(
                    0, 0, None, None, None, interrupted=True, source_released=False
                )
            feed = SentSource(source)
            try:
                with grpc.insecure_channel(cfg.target, options=KEEPALIVE) as channel:
                    summary = _Session(cfg, feed, truth, channel, on_prediction).run()
            except KeyboardInterrupt:
                interrupted = True
                feed.close(0.0)  # Ctrl-C again: the caller must not wait, nor exit normally
                raise
            except BaseException:
                feed.close()  # on this thread, before raising: see SentSource
                raise
    except _OpenFailed as e:  # its decoder's lines, known once the block is over
        decoder = f"; {said.summary()}" if said.lines else ""
        raise StreamError(f"{e}{decoder}") from None
    finally:
        if feed is not None and not interrupted and feed.frames_read:
            warn_if_damaged(cfg.source, feed, said)
    shown = hide_credentials(cfg.source)
    if not feed.frames_read and not summary.interrupted:
        # A file that opens and holds no frame OpenCV can decode (cut off after its
        # header), or a camera that ends before its first: nothing was streamed.
        decoder = f"; {said.summary()}" if said.lines else ""
        raise StreamError(f"the source ended before its first frame: {shown}{decoder}")
    if (feed.stalled or feed.camera) and not summary.interrupted:
        # A camera has no end, and a stream that sends nothing for OpenCV's 30 s has not
        # ended either: it was lost, where the run said it had streamed the source whole.
        # (A URL that closes may have ended: a file served over HTTP, a finite TS.)
        why = "sent nothing for 30 s" if feed.stalled else "the camera stopped"
        raise StreamError(
            f"the source stopped sending frames after {feed.frames_read}: {shown}: {why}",
            summary,
        )
    return summary


class _OpenFailed(Exception):
    """A URL or camera that could not be opened, before its decoder's lines are added."""


def _open_keeping(name: str) -> VideoSource | None:
    """open_source, its failure held until the decoder's lines are known."""
    try:
        return open_source(name)
    except StreamError as e:
        raise _OpenFailed(str(e)) from None


class _Session:
    """One `stream` run: the calls it opens to the server, one after another when the
    server goes away, and what their answers add up to."""

    def __init__(
        self,
        cfg: StreamConfig,
        feed: SentSource,
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
        self._latencies = Latencies(LATENCY_SAMPLE)
        self._correct = self._scored = self._skipped = self._reconnects = 0
        self._calls_answered = 0
        self._unsent = 0
        self._call_answered = False  # the call now open has answered a frame
        self._interrupted = False
        self._released = True
        self._away: threading.Event | None = None  # set to end an outage's letting go

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
        except (KeyboardInterrupt, RuntimeError) as e:
            if not is_stop(e):
                raise
            if call is not None:
                call.cancel()
            self._interrupted = True
        except grpc.RpcError as e:
            streamed = self._answered > 0
            said = CallFailure.of(e).describe(
                streamed,
                f"cannot reach the server at {self._cfg.target}",
                "the server ended the stream",
            )
            failure = StreamError(said, self.summary() if streamed else None)
        except StreamError as e:
            # Such as a new call's model lacking a label of the CSV: what was answered
            # before still counts.
            if e.summary is None and self._answered:
                e.summary = self.summary()
            failure = e
        finally:
            self._done.set()
            self._back()
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
            check_names(self._cfg.labels, self._truth, info.labels)
            # Once, after the names passed: a refused CSV is one line, not a warning too.
            if self._frame_count is not None and not self._warned_uncovered:
                self._warned_uncovered = True
                most = self._cfg.max_frames or self._frame_count
                warn_uncovered(self._cfg.labels, self._truth, min(self._frame_count, most))
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
        name = cfg.name or hide_credentials(cfg.source)  # a camera's password stays here
        yield pb.FrameRequest(options=pb.StreamOptions(top_k=cfg.top_k, stream_name=name))
        # Paced from where this call starts: after a reconnection a file goes on at its
        # rate rather than rushing to catch up on the time the server was away.
        start = time.perf_counter() - self._played_s
        self._back()
        # Frames let go while away were not to be sent: --max-frames counts the others.
        while cfg.max_frames == 0 or self._feed.frames_read - self._feed.let_go < cfg.max_frames:
            read = self._feed.read()
            if read is None:
                self._source_ended.set()
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
        failure = CallFailure.of(e)
        self._skipped += failure.skipped  # frames the server skipped after its last answer
        reason = failure.reason
        if reason is None and failure.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            reason = "too_many_bytes"  # gRPC's own message limit: the server gives one else
        if self._source_ended.is_set() and self._all_answered():
            print(
                f"actionstream stream: every frame was answered or skipped, then the call "
                f"ended with {failure}",
                file=sys.stderr,
                flush=True,
            )
            return True
        more_to_send = self._answered > 0 and not self._source_ended.is_set()
        limit_s = self._reconnection.limit_s
        outage_line = (
            f"actionstream stream: the server ended the stream ({failure}); reconnecting "
            f"for up to {limit_s:g} s"
        )
        step = self._reconnection.after_failure(failure.code, more_to_send, outage_line, reason)
        if step is Next.FAIL:
            raise e
        if step is Next.GIVE_UP:
            raise StreamError(
                f"the server went away mid-stream and no new stream could be opened within "
                f"{limit_s:g} s; gave up reconnecting (last: {failure})",
                self.summary(),
            ) from None
        self._wait_away()
        return False

    def _wait_away(self) -> None:
        """Waits for the next try. A live source's frames are let go (lost) until the next
        call reads, by one thread an outage, so that the call goes on from its current
        frame."""
        if self._feed.live and self._away is None:
            self._away = threading.Event()
            threading.Thread(
                target=self._feed.let_go_until, args=(self._away,), name="source-away"
            ).start()
        self._reconnection.wait()

    def _back(self) -> None:
        """A call reads the source again (or the run is over): the outage's thread stops."""
        if self._away is not None:
            self._away.set()
            self._away = None

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


def _print_prediction(prediction: pb.Prediction, truth: str | None, latency_ms: float) -> None:
    best = prediction.top[0]
    line = f"frame {prediction.sequence:6d}  {best.label:>12s} {best.probability:5.2f}"
    if truth is not None:
        # The CSV counts source frames from 0, the stream's numbers from 1: row n - 1.
        mark = "✓" if truth == best.label else "✗"
        line += f"  truth {truth:>12s} {mark} (csv frame {prediction.sequence - 1})"
    print(f"{line}  {latency_ms:6.1f} ms{events_text(prediction)}", flush=True)


def _print_prediction_json(prediction: pb.Prediction, truth: str | None, latency_ms: float) -> None:
    record = prediction_record(prediction) | {"latency_ms": latency_ms}
    if truth is not None:
        record["truth"] = truth
    print_json("prediction", record)


def run_stream(cfg: StreamConfig) -> int:
    """`actionstream stream`: 0 when the source was streamed to the end, 1 on failure,
    130 after Ctrl-C and 143 after SIGTERM (both with the summary so far)."""
    opencv_log.errors_only()  # what it warns of (a stalled stream), the errors here say
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
            report(e.summary, cfg.json, print_summary, summary_record, str(e))
        print(f"actionstream stream: {e}", file=sys.stderr)
        leave_if_source_held(e.source_released, "actionstream stream", 1)
        return 1
    report(summary, cfg.json, print_summary, summary_record)
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
