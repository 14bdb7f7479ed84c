"""The ActionRecognition gRPC service: thin glue from requests to the batcher and back.

A StreamFrames call runs as two tasks. Its reader takes requests off the
wire as fast as they come, passes each frame through the intake
(inference/intake.py: headers checked, resampled by capture time) and
queues it on its stream (dropping the oldest when inference is behind);
the handler hands each prediction the batcher produces to gRPC. Reading
never waits for inference, so a stream is always answered for its most
recent frames, and a stream never holds more than a few frames of work.

A WatchSource call's frames come from a source the server opens itself,
through sources/feed.py and the same intake, one at a time: the next is
read once this one is answered.

Refusals end an RPC by raising `Refused` (refusals.py); the places streams hold
are places.py's, the idle sweep idle_sweep.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator

import grpc
from google.protobuf.message import DecodeError

from actionstream.service.config import ServeConfig
from actionstream.service.credentials import hide_credentials
from actionstream.service.endpoint.idle_sweep import IdleSweep
from actionstream.service.endpoint.places import Places, client_address
from actionstream.service.endpoint.refusals import (
    Refused,
    as_refused,
    deadline_passed,
    sources_off,
)
from actionstream.service.inference.batcher import Batcher
from actionstream.service.inference.intake import Intake
from actionstream.service.inference.streams import (
    FrameRejected,
    PendingFrame,
    Stream,
)
from actionstream.service.sources.allowlist import SourceAllowlist
from actionstream.service.sources.feed import SourceFeed
from actionstream.service.sources.video_source import (
    CONTAINER_FORMATS,
    MAX_SOURCE_CHARS,
    AsyncVideoSource,
    SourceBusy,
    SourceError,
    SourceLimits,
    SourceNotAllowed,
    SourceNotFound,
    SourceOpener,
    SourceTimeout,
)
from actionstream.service.telemetry.logs import Throttle
from actionstream.service.telemetry.metrics import EndReason, Metrics
from actionstream.service.text import printable
from actionstream.service.trailers import REASON, trailer
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


# Stream ends whose log line spells out what the client was told: its mistakes, and the
# refusals an operator paged for a full server looks for (which cameras were turned away).
_TOLD_WHY = frozenset({"invalid_frame", "malformed", "refused", "evicted", "invalid_source"})
# Refusals that come in floods, cameras retrying against a full server: logged at most
# one a second (logs.Throttle), each counted in the metrics.
_FLOODS = frozenset({"refused", "evicted"})
# Streams' "opened" and "ended" lines: a burst as large as a server's cameras all
# reconnecting after a restart (two lines each, at least), then a rate no honest set of
# cameras keeps up, so that a client opening and closing streams as fast as it can
# cannot fill the disk. Streams that end as streams do have one such budget; those that
# end in trouble (a bad frame, a lost source, an idle client) another, so that a flood
# of the first cannot hide the line that names a broken camera.
STREAM_LINES_PER_S = 20.0
STREAM_LINES_BURST = 500
_ORDINARY_ENDS = frozenset({"completed", "cancelled", "shutdown"})
# The longest a WatchSource open may take, below the idle timeout when that is longer: an
# open holds FFmpeg's process-wide open lock, so every other open waits out a slow one,
# and a camera or stream that answers at all opens well within this.
_SOURCE_OPEN_TIMEOUT_S = 10.0


class ActionRecognition(pb_grpc.ActionRecognitionServicer):
    """Serves one model to many streams; each stream's state lives as long as its RPC."""

    def __init__(
        self, cfg: ServeConfig, batcher: Batcher, metrics: Metrics, worker: bool = False
    ) -> None:
        """`worker`: one of `serve --workers`' processes."""
        self._cfg = cfg
        self._batcher = batcher
        self._metrics = metrics
        meta = batcher.model.metadata
        self._meta = meta
        self._decoder = batcher.decoder
        self._places = Places(
            cfg.max_streams, cfg.waiting_calls_cap, metrics, cfg.max_streams_per_address, worker
        )
        self._idle = IdleSweep(cfg.idle_timeout_seconds)
        # WatchSource's sources: as many threads again as places may outlive their calls.
        self._sources = SourceOpener(
            SourceLimits(
                open_timeout_s=min(cfg.idle_timeout_seconds, _SOURCE_OPEN_TIMEOUT_S),
                read_timeout_s=cfg.idle_timeout_seconds,
                max_pixels=cfg.max_frame_pixels,
                formats=None if cfg.source_allowlist is None else CONTAINER_FORMATS,
            ),
            max_threads=2 * cfg.max_streams,
            allowlist=(
                None
                if cfg.source_allowlist is None
                else SourceAllowlist.parse(cfg.source_allowlist)
            ),
        )
        self._intake = Intake(self._decoder, metrics, cfg.heavy_pixels, self._admit)
        self._received = metrics.frames_received
        self._cut_off = False
        self._open: set[Stream] = set()  # every stream whose call is open
        self._turned_away = Throttle()
        burst = max(STREAM_LINES_BURST, 2 * cfg.max_streams)
        self._stream_lines = Throttle(STREAM_LINES_PER_S, burst)
        self._trouble_lines = Throttle(STREAM_LINES_PER_S, burst)
        self._overload = metrics.dropped("overload")

    async def cut_off(self, within_s: float) -> None:
        """The grace period is over: ends every open stream with UNAVAILABLE and its
        trailer (the frames skipped after its last answer), and waits up to `within_s`
        for them to end. A call gRPC cancels after that (a source read that had not
        returned) was cut by the server too, as _cancelled counts it; within the grace
        period, one is still its client's doing."""
        self._cut_off = True
        for stream in self._open:
            stream.fail(
                Refused(
                    grpc.StatusCode.UNAVAILABLE,
                    "the server is shutting down, and the stream's grace period is over; "
                    "connect again to go on (a new stream starts from a zero state)",
                    "shutdown",
                )
            )
        deadline = time.monotonic() + within_s
        while self._open and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    @property
    def sources_busy(self) -> int:
        """Source threads not done yet (see SourceOpener.busy)."""
        return self._sources.busy

    async def close(self) -> None:
        self._sources.close()
        await self._idle.close()

    async def StreamFrames(
        self, request_iterator: AsyncIterator[pb.FrameRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Prediction]:
        stream = self._new_stream(pb.StreamOptions(), context.peer(), context.peer())
        self._idle.watch(stream, context)
        self._places.wait(stream)
        reader = asyncio.create_task(self._read(request_iterator, stream))
        with self._ending("StreamFrames", stream, context) as ending:
            try:
                while True:
                    if stream.outbox is not None:
                        prediction, stream.outbox = stream.outbox, None
                        with stream.writing(prediction):
                            yield prediction
                        self._batcher.offer(stream)
                    elif stream.failure is not None:
                        raise as_refused(stream.failure)
                    elif stream.finished:
                        if stream.rejection is not None:
                            raise as_refused(stream.rejection)
                        # A client that cancels or whose connection drops ends the input
                        # as a half-close would, and then the handler is cancelled: one
                        # turn of the loop lets that cancellation land here, to be counted
                        # as such. (When it comes later, the stream is counted as
                        # completed.)
                        await asyncio.sleep(0)
                        break
                    else:
                        await stream.wakeup.wait()
                        stream.wakeup.clear()
                # The input ended, but maybe as the grace period or the client's deadline did.
                ending.reason = self._cut_short("StreamFrames", context) or "completed"
                # Frames resampled away after the last one answered have no prediction to
                # report them; the trailer does, so a client's counts add up.
                context.set_trailing_metadata(trailer(stream))
            finally:
                reader.cancel()

    async def _read(self, requests: AsyncIterator[pb.FrameRequest], stream: Stream) -> None:
        """Takes requests off the wire into the stream's queue; never waits for inference."""
        read = 0
        try:
            async for request in requests:
                read += 1
                if read == 1:
                    if request.HasField("options"):
                        self._configure(stream, request.options)
                elif not request.HasField("frame"):
                    # Nothing to act on: refused, or empty requests could hold a call open
                    # past the idle timeout without a frame.
                    # Counted as received too, so that rejected never exceeds received
                    # (the rejected-frames alert divides one by the other).
                    self._received.inc()
                    self._metrics.rejected("missing").inc()
                    stream.reject(
                        Refused(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"request {read} carries no frame (only a stream's first request "
                            "may come without one)",
                            "malformed",
                            "missing",  # as the rejected-frames counter has it
                        )
                    )
                    return
                stream.last_activity = time.monotonic()
                if request.HasField("frame"):
                    pending = self._intake.client_frame(stream, request.frame)
                    if pending is not None and not self._batcher.push(stream, pending):
                        self._overload.inc()
                    if stream.failure is not None or stream.rejection is not None:
                        return
        except DecodeError:
            self._received.inc()
            self._metrics.rejected("malformed").inc()
            stream.reject(
                Refused(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request {read + 1} is not a valid actionstream.v1.FrameRequest",
                    "malformed",
                )
            )
            return
        except Refused as e:  # no place for it (Intake's admit)
            stream.fail(e)
            return
        except Exception as e:
            # A fault of the server's own: the handler raises it (INTERNAL, logged there).
            stream.fail(e)
            return
        stream.input_done = True
        stream.wakeup.set()

    async def WatchSource(
        self, request: pb.SourceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Prediction]:
        # A file is read as fast as the model steps through it (each frame waits for the
        # previous prediction); a camera or URL at its own rate. No reconnecting and no
        # sharing between watchers yet.
        if not self._cfg.allow_sources:
            self._sources_off(request, context)
            return
        # Its frames come from the source, not the client: only a client that takes no
        # prediction is idle here.
        stream = self._new_stream(
            request.options, request.source, context.peer(), client_sends=False
        )
        self._idle.watch(stream, context)
        with self._ending("WatchSource", stream, context) as ending:
            self._admit(stream)
            source = await self._open_source(request.source)
            feed = SourceFeed(source, stream, self._intake, self._decoder, self._meta.fps)
            try:
                while (pending := await _next_from(feed)) is not None:
                    self._batcher.push(stream, pending)
                    # One frame at a time: the next is read once this one is answered.
                    while True:
                        if stream.failure is not None:
                            raise as_refused(stream.failure)
                        if (answer := stream.outbox) is not None:
                            break
                        await stream.wakeup.wait()
                        stream.wakeup.clear()
                    stream.outbox = None
                    with stream.writing(answer):
                        yield answer
                if source.live:
                    raise _source_lost(stream.answered)
            finally:
                source.close()
            ending.reason = "completed"
            # Frames skipped after the last answer, for a lost camera as for a file.
            context.set_trailing_metadata(trailer(stream))

    async def _open_source(self, source: str) -> AsyncVideoSource:
        """The opened source, or the status that says why not (quoting it cut short)."""
        try:
            return await self._sources.open(source)
        except SourceBusy as e:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), "refused") from e
        except SourceTimeout as e:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, str(e), "invalid_source") from e
        except SourceNotAllowed as e:
            raise Refused(grpc.StatusCode.PERMISSION_DENIED, str(e), "invalid_source") from e
        except SourceNotFound as e:
            raise Refused(grpc.StatusCode.NOT_FOUND, str(e), "invalid_source") from e
        except SourceError as e:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_source") from e

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        meta = self._meta
        return pb.ModelInfo(
            labels=meta.labels,
            input_width=meta.width,
            input_height=meta.height,
            fps=meta.fps,
            background_label=meta.background_label or "",
            version=meta.version,
        )

    def _new_stream(
        self,
        options: pb.StreamOptions,
        default_name: str,
        peer: str,
        *,
        client_sends: bool = True,
    ) -> Stream:
        """A stream for a call from `peer` (gRPC's name for the client's end)."""
        meta = self._meta
        stream = Stream(
            _shown_name(options.stream_name or default_name),
            options.top_k or self._cfg.default_top_k,
            meta.labels,
            meta.background_label,
            meta.fps,
            self._cfg.queue_frames,
            client_sends=client_sends,
        )
        stream.address = client_address(peer)
        self._open.add(stream)
        return stream

    def _configure(self, stream: Stream, options: pb.StreamOptions) -> None:
        stream.configure(
            _shown_name(options.stream_name) if options.stream_name else "", options.top_k
        )

    def _admit(self, stream: Stream) -> None:
        """Gives the stream a place and its state: a client's stream on its first frame, not
        when its call opens; a watched source's when its call opens."""
        self._places.take(stream)
        stream.state = self._batcher.model.zero_state(1)
        left_out = self._stream_lines.take()
        if left_out is not None:
            logger.info(
                "stream %d %s opened (top_k=%d)%s",
                stream.id,
                stream.name,
                stream.top_k,
                _left_out(left_out),
                extra=_about(stream),
            )

    def _refused(
        self, method: str, stream: Stream, refused: Refused, context: grpc.aio.ServicerContext
    ) -> EndReason:
        """Ends a call the server refused: its status, counted, and the frames skipped
        after its last answer in the trailer; the stream keeps what its client was told,
        for _close's log line."""
        if stream.failure is None:
            stream.fail(refused)
        self._refuse(method, refused, trailer(stream, refused.told), context)
        return refused.reason

    def _refuse(
        self,
        method: str,
        refused: Refused,
        trailing: tuple[tuple[str, str], ...],
        context: grpc.aio.ServicerContext,
    ) -> None:
        self._count_error(method, refused.code)
        context.set_code(refused.code)
        context.set_details(refused.details)
        context.set_trailing_metadata(trailing)

    def _sources_off(self, request: pb.SourceRequest, context: grpc.aio.ServicerContext) -> None:
        """Refuses WatchSource on a server without --allow-sources as the allowlist
        refuses a source: counted, ended and logged under the same reason. No stream is
        opened for it, so its trailer holds the reason alone; its line spends the stream
        lines' budget, as the allowlist's do, so a client calling in a loop cannot fill
        the disk."""
        refused = sources_off()
        self._refuse("WatchSource", refused, ((REASON, refused.told),), context)
        self._metrics.ended(refused.reason).inc()
        left_out = self._trouble_lines.take()
        if left_out is not None:
            name = _shown_name(request.options.stream_name or request.source)
            logger.info(
                "stream %s refused (%s%s)%s",
                name,
                refused.reason,
                _told_why(refused),
                _left_out(left_out),
                extra={"stream": name},
            )

    @contextlib.contextmanager
    def _ending(
        self, method: str, stream: Stream, context: grpc.aio.ServicerContext
    ) -> Iterator[_Ending]:
        """Around a streaming call's handler, which sets the reason of a call it ends itself:
        a call ended otherwise gets its status and trailer, and is counted; either way
        everything its stream held is freed."""
        ending = _Ending()
        try:
            yield ending
        except Refused as e:
            ending.reason = self._refused(method, stream, e, context)
        except (asyncio.CancelledError, GeneratorExit):
            ending.reason = self._cancelled(stream, method, context)
            raise
        except Exception:
            self._internal_error(method, stream, context)
        finally:
            self._close(stream, ending.reason)

    def _cancelled(
        self, stream: Stream, method: str, context: grpc.aio.ServicerContext
    ) -> EndReason:
        """Why a call was cut short: expired by the sweep, refused by gRPC, or the client
        (its deadline, or its own doing)."""
        if isinstance(stream.failure, Refused):
            self._count_error(method, stream.failure.code)
            return stream.failure.reason
        if (reason := self._cut_short(method, context)) is not None:
            return reason
        # A client that cancels, one whose connection dropped, and a message gRPC refused
        # for its size (the client gets RESOURCE_EXHAUSTED) all reach the handler the
        # same way in grpc.aio: the input ends, then the handler is cancelled.
        self._count_error(method, grpc.StatusCode.CANCELLED)
        return "cancelled"

    def _cut_short(self, method: str, context: grpc.aio.ServicerContext) -> EndReason | None:
        """The reason, counted, of a call that the grace period's end or the client's
        deadline cut short (the client got UNAVAILABLE, or DEADLINE_EXCEEDED); None if
        neither did."""
        if self._cut_off:
            self._count_error(method, grpc.StatusCode.UNAVAILABLE)
            return "shutdown"
        if deadline_passed(context):
            self._count_error(method, grpc.StatusCode.DEADLINE_EXCEEDED)
            return "cancelled"
        return None

    def _close(self, stream: Stream, reason: EndReason) -> None:
        """Frees everything the stream held; counts how it ended."""
        self._open.discard(stream)
        self._idle.forget(stream)
        waiting = self._batcher.drain(stream)
        if waiting:
            self._metrics.dropped("stream_ended").inc(waiting)
        # What the client was told, for the log: an operator can then tell which camera
        # sends bad frames. Server-made text (numbers, fixed words), bounded all the same.
        told = stream.failure
        if isinstance(told, FrameRejected):
            told = as_refused(told)
        why = _told_why(told) if isinstance(told, Refused) and reason in _TOLD_WHY else ""
        stream.close()
        self._metrics.ended(reason).inc()
        # The state goes with the stream object; a batch in flight may still be writing it.
        if self._places.give_back(stream):
            lines = self._stream_lines if reason in _ORDINARY_ENDS else self._trouble_lines
            left_out = lines.take()
            if left_out is not None:
                logger.info(
                    "stream %d %s ended (%s%s) after %d frames, %d answered, %d dropped by "
                    "overload%s",
                    stream.id,
                    stream.name,
                    reason,
                    why,
                    stream.frames,
                    stream.answered,
                    stream.dropped_overload,
                    _left_out(left_out),
                    extra=_about(stream),
                )
        elif why:  # refused on its first request, before it took a place
            flood = reason in _FLOODS
            left_out = (self._turned_away if flood else self._trouble_lines).take()
            if left_out is not None:
                logger.info(
                    "stream %d %s refused (%s%s)%s",
                    stream.id,
                    stream.name,
                    reason,
                    why,
                    (f"; {left_out} more turned away since the last such line" if left_out else "")
                    if flood
                    else _left_out(left_out),
                    extra=_about(stream),
                )

    def _internal_error(
        self, method: str, stream: Stream, context: grpc.aio.ServicerContext
    ) -> None:
        """Ends a call that a fault of the server's own broke: the traceback goes to the log,
        the client gets INTERNAL and the stream's id to quote, never the exception's text."""
        logger.exception("%s failed", method, extra=_about(stream))
        self._count_error(method, grpc.StatusCode.INTERNAL)
        context.set_trailing_metadata(trailer(stream, "error"))
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details(
            f"internal server error; the server's log has it under stream id {stream.id}"
        )

    def _count_error(self, method: str, code: grpc.StatusCode) -> None:
        self._metrics.rpc_errors.labels(method=method, code=code.name).inc()


class _Ending:
    """How a call ended, for _close: "error" unless its handler or _ending says otherwise."""

    reason: EndReason = "error"


def _source_lost(answered: int) -> Refused:
    # A file that ends has finished; a camera or live stream that ends was lost, and a
    # client told so may call again (UNAVAILABLE is gRPC's "try again").
    return Refused(
        grpc.StatusCode.UNAVAILABLE,
        f"the source stopped sending frames after {answered} predictions: a camera or live "
        "stream that ended, dropped or fell silent past the read timeout; watch it again "
        "to go on",
        "source_lost",
    )


async def _next_from(feed: SourceFeed) -> PendingFrame | None:
    """A watched source's next frame to step; a frame over max_frame_pixels ends the call."""
    try:
        return await feed.next()
    except SourceError as e:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_source") from e


def _shown_name(name: str) -> str:
    """A stream's name as logs show it (Stream cuts it to NAME_LIMIT characters): without
    the secrets of a camera URL, which clients often name their streams by. Only as much
    of it as a source may hold is looked at: a client may send megabytes."""
    return hide_credentials(name, MAX_SOURCE_CHARS)


def _about(stream: Stream) -> dict[str, object]:
    return {"stream": stream.name, "stream_id": stream.id}


def _told_why(refused: Refused) -> str:
    """What a refused client was told, for the end of its stream's line."""
    return f": {refused.code.name}: {printable(refused.details, 200)}"


def _left_out(count: int) -> str:
    """The end of a stream's line that says how many such lines the budget left out."""
    return f"; {count} stream lines left out before this one" if count else ""
