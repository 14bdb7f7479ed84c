"""One stream's life on the server: what it waits with, what it carries, what it answers.

A stream holds at most `queue_frames` frames waiting for inference; when a
new frame arrives to a full queue the oldest waiting one is dropped, so an
overloaded server answers fewer frames but always recent ones. Frames are
first resampled by capture timestamp to the model's frame rate. The
recurrent state (a dict of arrays with a leading batch axis of 1, the
model's own layout; empty until the stream is admitted, and for a stateless
model) is made when the stream is admitted, on its first frame (a watched
source's when its call opens), so an opened call that never sends anything
costs no model memory.

Which thread and which module writes what of a stream is set out in
Stream's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass

import numpy as np

from actionstream.resampling import Resampler
from actionstream.service.inference.action_tracker import ActionTracker
from actionstream.service.inference.clock_check import ClockCheck
from actionstream.service.inference.frames import Checked, FrameError
from actionstream.service.text import printable
from actionstream.v1 import actionstream_pb2 as pb

# Sequence numbers are uint64 on the wire; the server's own count wraps from here to 1 (0 is
# "unset"), so a client that sends the largest number and then a 0 cannot overflow the field.
SEQUENCE_MAX = 2**64 - 1
_ids = itertools.count(1)


class FrameRejected(Exception):
    """A frame of this stream was refused; ends the stream with the frame's number."""

    def __init__(self, sequence: int, error: FrameError) -> None:
        super().__init__(f"frame {sequence}: {error}")
        self.sequence = sequence
        self.error = error


class StreamClosed(Exception):
    """A stream's failure once its call is over, unless it had failed before (Stream.close)."""


@dataclass(slots=True)
class PendingFrame:
    """A frame between its arrival and its prediction."""

    frame: pb.Frame
    checked: Checked | None  # what its headers said (None for a source's frame)
    sequence: int
    received: float  # perf_counter() at arrival
    _: KW_ONLY  # a bare True or False says nothing at the call
    heavy: bool  # decodes to more pixels than the batch's lane takes (see batcher.py)
    image: np.ndarray | None = None  # decoded ahead, by the heavy lane or a source reader
    skipped: int = 0  # frames of its stream dropped just before it (see Stream.push)


class Stream:
    """A live stream: its queue of frames, its state once it has one, its next answer.

    Its fields are public and written where they are used: the hot ones change
    on every frame, where a method would cost a call each. These rules say who
    writes which, all on the event loop unless said:

    - The intake (intake.py, for a client's or a source's frames) numbers and
      resamples: `frames`, `last_sequence`, `resampler`, `skipped`,
      `resampled`, `clock`. The servicer's reader sets `last_activity`,
      `input_done` and `rejection` (`reject()`), and `name` and `top_k`
      (`configure()`) before its first frame.
    - The servicer sets `address` as it makes the stream; places
      (endpoint/places.py) sets `admitted`; the servicer sets `state`
      when it admits the stream, before its first frame is queued.
    - The batcher owns `in_batcher`: set while the stream is lined up, and
      while its frame is in a batch or the heavy lane; it is lined up again
      only once that frame's answer has been handed to gRPC. While lined up,
      a batch thread may take its next frame, so `queue`, `decoded`,
      `in_batcher` and the counts `push()` keeps change only under the
      batcher's lock then (Batcher.push, offer, drain, _take).
    - While its frame is in a batch, the batch thread (batch_step.py) owns
      `state`, `tracker` and `prediction()`; the loop leaves them alone.
    - The batcher sets `outbox` on the loop; the handler takes it, and keeps
      `handed`, `skips_handed`, `answered` and `writing_since` (`writing()`).
    - Any of them ends the stream with `fail()` (the first failure stays),
      which sets `wakeup` for the handler, as a new `outbox` and the end of
      the input do; the servicer calls `close()` once the call is over. The
      idle sweep (endpoint/idle_sweep.py) reads `awaits_frames`,
      `last_activity` and `writing_since`, and writes nothing but a failure.
    """

    def __init__(
        self,
        name: str,
        top_k: int,
        labels: tuple[str, ...],
        background: str | None,
        fps: float,
        queue_frames: int,
        *,
        client_sends: bool = True,
    ) -> None:
        """`client_sends` is False for a stream whose frames the server reads itself."""
        self.id = next(_ids)
        self.address = ""  # the client's host, for its limit of places (endpoint/places.py)
        self.labels = labels
        self.name = ""
        self.top_k = 0
        self.configure(name, top_k)
        self.state: dict[str, np.ndarray] = {}  # none until admitted
        # Holds one of max_streams places: from its first frame, or a watched source's from
        # when its call opens.
        self.admitted = False
        self.tracker = ActionTracker(labels, background, fps)
        self.resampler = Resampler(fps)
        self.queue: deque[PendingFrame] = deque()
        self.queue_frames = queue_frames
        self.skipped = 0  # frames resampled away since the last one queued
        self.dropped_overload = 0  # frames dropped because the queue was full, all told
        self.frames = 0  # frames that arrived
        self.resampled = 0  # of them, taken out by the resampler
        self.queued = 0  # and queued for the model (the overload drops among them)
        self.handed = 0  # predictions handed to gRPC
        self.refused_queued = 0  # queued frames refused as they were decoded (refuse_frame)
        self.skips_handed = 0  # the skipped_frames they reported, all told
        self.answered = 0
        self.last_sequence = 0
        self.in_batcher = False  # lined up, or its frame in a batch or the heavy lane
        self.decoded: PendingFrame | None = None  # back from the heavy lane, next for a batch
        self.outbox: pb.Prediction | None = None  # answered, not yet handed to gRPC
        self.client_sends = client_sends
        self.input_done = False  # its client sent its last request
        self.failure: Exception | None = None
        # The client's bad request: ends the call once the frames before it are answered.
        self.rejection: Exception | None = None
        self.wakeup = asyncio.Event()
        self.last_activity = time.monotonic()
        self.writing_since: float | None = None
        self.clock = ClockCheck()

    def configure(self, name: str, top_k: int) -> None:
        """Sets what the client asked for, as far as the stream allows: a name fit for the
        logs, and no more labels than the model has; an empty name or a 0 leaves it be."""
        if name:
            self.name = printable(name)
        if top_k:
            self.top_k = min(top_k, len(self.labels))

    def number(self, client_sequence: int) -> int:
        """The frame's sequence number: the client's, or one more than the previous frame's."""
        self.frames += 1
        self.last_sequence = client_sequence or self.last_sequence % SEQUENCE_MAX + 1
        return self.last_sequence

    @contextlib.contextmanager
    def writing(self, prediction: pb.Prediction) -> Iterator[None]:
        """Around handing a prediction to gRPC: the idle sweep ends a client that stops
        reading (writing_since), and the prediction counts as answered once taken."""
        self.writing_since = time.monotonic()
        self.handed += 1
        self.skips_handed += prediction.skipped_frames
        yield
        self.writing_since = None
        self.answered += 1

    @property
    def skipped_since_answer(self) -> int:
        """Frames skipped (resampled away, or dropped behind) that no prediction handed to
        the client reported: those after its last, with those the frames still waiting
        carried when the call ended early."""
        return self.resampled + self.dropped_overload - self.skips_handed

    @property
    def unanswered(self) -> int:
        """Frames queued for the model, not dropped, and never answered: waiting, in a
        batch, or answered too late, when the call ended early. Not a frame refused as
        it was decoded, which the call's reason tells (as it tells one refused on
        arrival, which was never queued)."""
        return self.queued - self.dropped_overload - self.handed - self.refused_queued

    def resampled_away(self) -> None:
        """Counts a frame the resampler skipped; the next frame queued reports it."""
        self.resampled += 1
        self.skipped += 1

    def push(self, pending: PendingFrame) -> bool:
        """Queues a frame; False if that dropped the oldest one waiting.

        Each frame carries the drops just before it: the resampler's since the
        previous frame queued, and, when the oldest waiting frame is dropped,
        that frame and its own count pass to the frame now first in line.
        """
        self.queued += 1
        pending.skipped, self.skipped = self.skipped, 0
        self.queue.append(pending)
        if len(self.queue) > self.queue_frames:
            dropped = self.queue.popleft()
            self.queue[0].skipped += dropped.skipped + 1
            self.dropped_overload += 1
            return False
        return True

    @property
    def schedulable(self) -> bool:
        """Has a frame for a batch and nothing between it and its client."""
        return (
            (self.decoded is not None or bool(self.queue))
            and not self.in_batcher
            and self.outbox is None
            and self.failure is None
        )

    @property
    def finished(self) -> bool:
        """The client is done sending and every frame it sent has been answered or dropped."""
        return self.input_done and not self.queue and self.decoded is None and not self.in_batcher

    def take(self) -> PendingFrame:
        """The next frame for a batch (schedulable must hold)."""
        pending = self.decoded if self.decoded is not None else self.queue.popleft()
        self.decoded = None
        return pending

    def fail(self, error: Exception) -> None:
        """Ends the stream now, dropping what waits in its queue."""
        if self.failure is None:
            self.failure = error
        self.wakeup.set()

    def refuse_frame(self, sequence: int, error: FrameError) -> None:
        """Ends the stream for queued frame `sequence`, which its decode found bad."""
        self.refused_queued += 1
        self.fail(FrameRejected(sequence, error))

    def close(self) -> None:
        """The call is over: whatever of the stream the batcher or the heavy lane still
        holds is dropped, as a failed stream's is (a closed stream always has a failure;
        one it failed with stays, as what its client was told)."""
        self.fail(StreamClosed())

    @property
    def awaits_frames(self) -> bool:
        """Its client is to send frames and has not ended its input: the idle sweep ends a
        stream that waits too long for one."""
        return self.client_sends and not self.input_done

    def reject(self, error: Exception) -> None:
        """The client sent what the stream cannot take: nothing more is read, the frames it
        sent before are answered, and then the call ends with `error`. (Those frames were
        sound; dropping them left the client a frame it could not account for.)"""
        if self.rejection is None:
            self.rejection = error
        self.input_done = True
        self.wakeup.set()

    def prediction(self, probs: np.ndarray, pending: PendingFrame) -> pb.Prediction:
        """The answer for one frame's probabilities (C,); the batch fills in its latency."""
        best = np.argsort(-probs, kind="stable")[: self.top_k]
        events = self.tracker.update(probs, pending.sequence)
        return pb.Prediction(
            sequence=pending.sequence,
            timestamp_us=pending.frame.timestamp_us,
            skipped_frames=pending.skipped,
            top=[pb.LabelScore(label=self.labels[i], probability=float(probs[i])) for i in best],
            action=self.tracker.action,
            events=events,
        )
