"""One cross-stream micro-batcher: many streams' frames, one thread hop, one model step.

Streams with a frame waiting line up in a FIFO (round robin, so every stream
gets its turn); the batcher takes up to `max_batch` of them, never two
frames of one stream, waiting at most `max_wait` for a batch to fill while
no batch runs. The whole batch crosses to a batch thread once: there every
frame is decoded (OpenCV releases the GIL, so the event loop keeps reading
and writing meanwhile), the streams' states are gathered along the batch
axis, one model step runs, and each stream gets its row of the new state and
its prediction back (batch_step.py). Per frame, nothing crosses a thread on
its own and no future is created.

There are `decode_threads` batch threads (2 by default; one per core suits
most machines, and the figures here were measured on a 2-core one). The
batch threads with no batch of their own decode a share of the running one,
so a batch decodes on every core at once. A second batch starts beside a
running one only when the line already holds a full batch: short of that,
waiting lets the next batch grow, and a wider step costs less a frame. Once
the server falls behind, one batch's step and bookkeeping (a single thread's
work) overlap another's decoding instead of leaving a core idle. (Measured
at 100 cameras on that machine, five runs each, alternately: 95-100% of
frames answered, three runs all of them, against 76-88% with one batch at a
time.) A thread lent to decode a share of one batch takes no batch of its
own until that share is done, or the share would wait behind a whole batch.
Two batches never hold a frame of the same stream, so each stream's frames
are still stepped in order.

The event loop starts batches, except one: a batch thread that finishes
while a full batch waits takes that batch off the line itself (under a lock
shared with the loop) and hands its finished batch's answers to the loop. A
loaded loop is busy reading frames, and waiting for its turn there had each
batch thread idle 11-15% of the time at 100 cameras; taking the batch
itself, one process answered every frame within p99 100 ms in 4 of 5 runs,
against 1 of 5 just before.

A frame whose decoding costs more than a `heavy_pixels` image (a 4K PNG,
say: 100 ms and more to decode, a 4K JPEG 21 ms even at 1/8 scale, against
about 0.4-0.7 ms for a 640×480 JPEG decoded at reduced scale) would hold up
every stream in its batch for that long (`Checked.work` estimates the cost
from the header: full size, times half the scans of a progressive JPEG, or
the bytes of a dense or arithmetic-coded one, and a PNG's pixels, weighed by
their cost against a JPEG's). Such
frames are decoded in a lane of their own instead, one at a time, which
then rests so that it uses at most `HEAVY_SHARE` of one core: a stream that
sends them gets what that share buys (its own queue drops the rest), and
the streams beside it keep their batches and their latency. The size is
known from the image header before any work is done.

The decode and model threads run at a lower CPU priority (`nice`, 5 by
default) than the event loop. When the cores are full, reading frames off
the sockets and sending predictions then go first: frames that cannot be
decoded in time are dropped from their streams' queues, counted and
reported, instead of piling up unread in socket buffers where they would age
unseen. (Measured with two processes and 200 cameras at 10 fps on the 2-core
machine: p99 capture-to-prediction 148-234 ms in five runs at nice 5,
against 275 and 310 ms in two at 0.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from actionstream.service.inference.batch_step import BatchStep, Result
from actionstream.service.inference.frames import FrameDecoder, FrameError
from actionstream.service.inference.model import OnnxStepModel
from actionstream.service.inference.streams import PendingFrame, Stream
from actionstream.service.telemetry.metrics import Metrics

HEAVY_SHARE = 0.25
logger = logging.getLogger(__name__)


def _lower_priority(nice: int) -> None:
    """Makes the calling thread `nice` steps less favoured by the scheduler (Linux, where a
    thread is a task of its own; elsewhere setpriority would reach the whole process)."""
    if not nice or sys.platform != "linux":
        return
    try:
        # Counted from the process's niceness (its main thread's; a new thread inherits
        # its creator's, which may be a lowered one): a server started under `nice`
        # keeps these threads below its own, not at `nice` itself, above it.
        own = os.getpriority(os.PRIO_PROCESS, os.getpid())
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, own + nice))
    except OSError as e:
        # A sandbox that forbids it costs the priority, never the thread: an initializer
        # that raises would leave its pool broken and every batch failing.
        logger.warning("could not lower the priority of a decode thread (%s); serving on", e)


class Batcher:
    """Runs every model step of the server, for as many streams at once as are ready."""

    def __init__(
        self,
        model: OnnxStepModel,
        decoder: FrameDecoder,
        metrics: Metrics,
        max_batch: int,
        max_wait: float,
        decode_threads: int,
        nice: int = 0,
    ) -> None:
        self.model = model
        self.decoder = decoder
        self._metrics = metrics
        self._max_batch = max_batch
        self._max_wait = max_wait
        self._ready: deque[Stream] = deque()
        # Guards the line and the frame queues of the streams in it: the loop adds to
        # them, and a batch thread may take its next batch off the line itself.
        self._lock = threading.Lock()
        self._heavy: deque[tuple[Stream, PendingFrame]] = deque()
        self._heavy_wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None  # ends the wait for a batch to fill
        self._closed = False

        def thread_pool(name: str) -> ThreadPoolExecutor:
            return ThreadPoolExecutor(1, name, initializer=_lower_priority, initargs=(nice,))

        # Each runs a batch of its own, or decodes a share of another's.
        self._threads = [thread_pool(f"batch-{k}") for k in range(decode_threads)]
        self._busy = [False] * decode_threads  # running a batch of its own
        # The number of the batch it decodes a share of, until that share is done: a
        # thread holding a share takes no batch, or the share would wait behind it.
        self._lent: list[int | None] = [None] * decode_threads
        self._batches_made = 0
        self._running: set[Future[None]] = set()
        self._heavy_executor = thread_pool("heavy")
        self._tasks: list[asyncio.Task[None]] = []
        self._first_ready = 0.0  # when the oldest stream in line lined up
        self._step = BatchStep(model, metrics)
        self._predicted = {
            label: metrics.predictions.labels(label) for label in model.metadata.labels
        }

    def warm_up(self) -> None:
        """One step at every batch size, so no live batch pays for a first run at its shape."""
        meta = self.model.metadata
        for n in range(1, self._max_batch + 1):
            frames = np.zeros((n, meta.height, meta.width, 3), np.uint8)
            self.model.step(frames, self.model.zero_state(n))

    def start(self) -> None:
        """Binds the batcher to the running loop and starts the heavy lane."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.create_task(self._heavy_lane(), name="heavy-lane")]

    async def stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*map(asyncio.wrap_future, self._running), return_exceptions=True)
        for executor in (*self._threads, self._heavy_executor):
            await asyncio.to_thread(executor.shutdown, True)

    def push(self, stream: Stream, pending: PendingFrame) -> bool:
        """Queues a stream's new frame and lines the stream up; False if that dropped the
        oldest frame it had waiting (see Stream.push)."""
        with self._lock:
            kept = stream.push(pending)
            lined_up = self._line_up(stream)
        if lined_up:
            self._dispatch()
        return kept

    def offer(self, stream: Stream) -> None:
        """Lines `stream` up for a batch if it has a frame and nothing else in progress."""
        with self._lock:
            lined_up = self._line_up(stream)
        if lined_up:
            self._dispatch()

    def drain(self, stream: Stream) -> int:
        """Drops the frames an ending stream still has waiting; returns how many."""
        with self._lock:
            waiting = len(stream.queue) + (stream.decoded is not None)
            stream.queue.clear()
            stream.decoded = None
        return waiting

    def _line_up(self, stream: Stream) -> bool:
        # Holding the lock.
        if not stream.schedulable:
            return False
        stream.in_batcher = True  # lined up counts: it must not line up twice
        if not self._ready:
            self._first_ready = time.monotonic()
        self._ready.append(stream)
        return True

    def _idle_threads(self) -> list[int]:
        return [k for k, busy in enumerate(self._busy) if not busy and self._lent[k] is None]

    def _free_thread(self) -> int | None:
        """The batch thread the next batch runs on, or None while it should wait: a
        second batch starts beside a running one only when the line holds a full batch."""
        idle = self._idle_threads()
        if not idle or (len(idle) < len(self._threads) and len(self._ready) < self._max_batch):
            return None
        return idle[0]

    def _dispatch(self) -> None:
        """On the loop, whenever the line or a thread changes: starts what may start now.

        Decides under the lock, since a batch thread may take from the line meanwhile.
        """
        while not self._closed:
            with self._lock:
                if not self._ready or (k := self._free_thread()) is None:
                    return
                # Give other streams a moment to join, counted from when the first one
                # lined up: under load the line formed while the last batch ran, so
                # nobody waits.
                wait = self._first_ready + self._max_wait - time.monotonic()
                if len(self._ready) < self._max_batch and wait > 0:
                    if self._timer is None:
                        assert self._loop is not None, "start() binds the batcher to its loop"
                        self._timer = self._loop.call_later(wait, self._waited)
                    return
                batch, heavy = self._take()
                # The other idle threads decode a share of it, unless a full batch is
                # waiting for them.
                full_waits = len(self._ready) >= self._max_batch
            self._to_heavy_lane(heavy)
            if batch:
                self._submit(k, batch, [] if full_waits else self._idle_threads())

    def _waited(self) -> None:
        self._timer = None
        self._dispatch()

    def _take(self) -> tuple[list[tuple[Stream, PendingFrame]], list[tuple[Stream, PendingFrame]]]:
        """Holding the lock: up to max_batch streams' next frames off the line, and the
        heavy ones among them apart."""
        batch: list[tuple[Stream, PendingFrame]] = []
        heavy: list[tuple[Stream, PendingFrame]] = []
        while self._ready and len(batch) < self._max_batch:
            stream = self._ready.popleft()
            if stream.failure is not None or (stream.decoded is None and not stream.queue):
                stream.in_batcher = False  # it ended while in line
                continue
            pending = stream.take()
            if pending.heavy and pending.image is None:
                heavy.append((stream, pending))
            else:
                batch.append((stream, pending))
        return batch, heavy

    def _to_heavy_lane(self, heavy: list[tuple[Stream, PendingFrame]]) -> None:
        """On the loop."""
        if heavy:
            self._heavy.extend(heavy)
            self._heavy_wake.set()

    def _submit(self, k: int, batch: list[tuple[Stream, PendingFrame]], idle: list[int]) -> None:
        """Starts `batch` on batch thread `k`; the `idle` threads other than k decode a
        share of it."""
        loop = self._loop
        assert loop is not None, "start() binds the batcher to its loop"
        helpers = [j for j in idle if j != k]
        self._batches_made += 1
        number = self._batches_made
        self._busy[k] = True
        for j in helpers:
            self._lent[j] = number
        future = self._threads[k].submit(self._work, loop, batch, number, helpers)
        self._running.add(future)

        def finished(done: Future[None]) -> None:  # on the batch thread
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody left to answer
                loop.call_soon_threadsafe(self._finished, k, number, helpers, done)

        future.add_done_callback(finished)

    def _work(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Stream, PendingFrame]],
        number: int,
        helpers: list[int],
    ) -> None:
        """On a batch thread: runs `batch`, and the next one as long as a full one waits
        (see the module's docstring); each batch's answers go to the loop as it ends."""
        while True:
            try:
                outcome: list[Result] | Exception = self._run(loop, batch, number, helpers)
            except Exception as e:
                outcome = e
            following: list[tuple[Stream, PendingFrame]] = []
            heavy: list[tuple[Stream, PendingFrame]] = []
            with self._lock:
                if not self._closed and len(self._ready) >= self._max_batch:
                    following, heavy = self._take()
            loop.call_soon_threadsafe(self._settle, batch, outcome, heavy)
            if not following:
                return
            batch, helpers = following, []

    def _settle(
        self,
        batch: list[tuple[Stream, PendingFrame]],
        outcome: list[Result] | Exception,
        heavy: list[tuple[Stream, PendingFrame]],
    ) -> None:
        """On the loop: answers a batch's streams."""
        self._to_heavy_lane(heavy)
        if isinstance(outcome, Exception):
            # A fault of the server's own: these streams end (INTERNAL), the others go on.
            logger.error("batch of %d failed", len(batch), exc_info=outcome)
            for stream, _ in batch:
                stream.in_batcher = False
                stream.fail(outcome)
        else:
            self._deliver(batch, outcome)

    def _finished(self, k: int, number: int, helpers: list[int], future: Future[None]) -> None:
        """On the loop: batch thread `k` has nothing left to run; hands it the next batch."""
        self._running.discard(future)
        self._busy[k] = False
        self._return(number, helpers)

    def _return(self, number: int, helpers: list[int]) -> None:
        """On the loop: the helpers' shares of batch `number` are done."""
        for j in helpers:
            if self._lent[j] == number:
                self._lent[j] = None
        self._dispatch()

    def _decode(self, frames: list[PendingFrame]) -> list[np.ndarray | FrameError]:
        out: list[np.ndarray | FrameError] = []
        for pending in frames:
            if pending.image is not None:
                out.append(pending.image)
                continue
            start = time.perf_counter()
            try:
                out.append(self.decoder.decode(pending.frame, pending.checked))
            except FrameError as e:
                out.append(e)
            # Refused frames too: a frame can cost much before the decoder gives up on it.
            self._metrics.decode.observe(time.perf_counter() - start)
        return out

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[Stream, PendingFrame]],
        number: int,
        helpers: list[int],
    ) -> list[Result]:
        """On a batch thread: decodes the batch, sharing it with the helper threads, and
        steps it (batch_step.py). The loop leaves these streams alone meanwhile."""
        frames = [pending for _, pending in batch]
        # Decoding is most of a batch's work and OpenCV releases the GIL: the helper
        # threads take a share each, so a batch decodes on every core at once.
        share = -(-len(frames) // (len(helpers) + 1))
        helped = [
            self._threads[j].submit(self._decode, frames[i * share : (i + 1) * share])
            for i, j in enumerate(helpers, start=1)
            if i * share < len(frames)
        ]
        try:
            decoded = self._decode(frames[:share])
            for future in helped:
                decoded += future.result()
        finally:
            if helpers:
                # Free to take a batch of their own while this one steps (or, after a
                # fault, once their shares are done: a share must not wait behind them).
                concurrent.futures.wait(helped)
                loop.call_soon_threadsafe(self._return, number, helpers)
        return self._step(batch, decoded)

    def _deliver(self, batch: list[tuple[Stream, PendingFrame]], results: list[Result]) -> None:
        now = time.perf_counter()
        metrics = self._metrics
        predicted = self._predicted
        answered = 0
        for (stream, pending), result in zip(batch, results, strict=True):
            stream.in_batcher = False
            if isinstance(result, FrameError):
                metrics.rejected(result.reason).inc()
                stream.refuse_frame(pending.sequence, result)
                continue
            if isinstance(result, Exception):
                stream.fail(result)  # its handler logs it and ends the call with INTERNAL
                continue
            try:
                result.latency_seconds = now - pending.received
                metrics.frame_latency.observe(result.latency_seconds)
                predicted[result.top[0].label].inc()
            except Exception as e:  # a fault of ours with this stream: the rest are answered
                stream.fail(e)
                continue
            stream.outbox = result
            stream.wakeup.set()
            answered += 1
        metrics.frames_processed.inc(answered)

    def _drop_ended(self, stream: Stream) -> None:
        """Counts a heavy-lane frame whose stream ended: drain() could not see it."""
        stream.in_batcher = False
        self._metrics.dropped("stream_ended").inc()

    async def _heavy_lane(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._heavy:
                self._heavy_wake.clear()
                await self._heavy_wake.wait()
            stream, pending = self._heavy.popleft()
            if stream.failure is not None:  # ended while it waited: no decode for nobody
                self._drop_ended(stream)
                continue
            start = time.perf_counter()
            try:
                pending.image = await loop.run_in_executor(
                    self._heavy_executor, self.decoder.decode, pending.frame, pending.checked
                )
            except FrameError as e:
                self._metrics.rejected(e.reason).inc()
                stream.in_batcher = False
                stream.refuse_frame(pending.sequence, e)
            except Exception as e:
                # A fault of the server's own: this stream ends (INTERNAL); the lane
                # goes on for the others.
                stream.in_batcher = False
                stream.fail(e)
            else:
                if stream.failure is not None:  # ended (and drained) while it was decoded
                    self._drop_ended(stream)
                else:
                    stream.decoded = pending
                    stream.in_batcher = False
                    self.offer(stream)
            spent = time.perf_counter() - start
            self._metrics.decode.observe(spent)
            # Rest, so the lane's share of one core stays at HEAVY_SHARE whatever it is
            # sent, frames the decoder gave up on late included.
            await asyncio.sleep(spent * (1 / HEAVY_SHARE - 1))
