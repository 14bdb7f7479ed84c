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

Refusals end an RPC by raising `Refused` (refusals.py), which call_end.py turns
into the client's status, the metrics and the log; the places streams hold are
places.py's, the idle sweep idle_sweep.py's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf.message import DecodeError

from actionstream.service.config import ServeConfig
from actionstream.service.endpoint.call_end import CallEnds, shown_name
from actionstream.service.endpoint.idle_sweep import IdleSweep
from actionstream.service.endpoint.places import Places, client_address
from actionstream.service.endpoint.refusals import (
    Refused,
    as_refused,
)
from actionstream.service.inference.batcher import Batcher
from actionstream.service.inference.intake import Intake
from actionstream.service.inference.streams import (
    PendingFrame,
    Stream,
)
from actionstream.service.sources.allowlist import SourceAllowlist
from actionstream.service.sources.feed import SourceFeed
from actionstream.service.sources.video_source import (
    CONTAINER_FORMATS,
    AsyncVideoSource,
    SourceBusy,
    SourceError,
    SourceLimits,
    SourceNotAllowed,
    SourceNotFound,
    SourceOpener,
    SourceTimeout,
)
from actionstream.service.telemetry.metrics import Metrics
from actionstream.service.trailers import trailer
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

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
        self._ends = CallEnds(cfg, metrics, self._places, self._idle, batcher)
        self._overload = metrics.dropped("overload")

    async def cut_off(self, within_s: float) -> None:
        """The grace period is over: ends every open stream now (CallEnds.cut_off)."""
        await self._ends.cut_off(within_s)

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
        with self._ends.ending("StreamFrames", stream, context) as ending:
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
                ending.reason = self._ends.cut_short("StreamFrames", context) or "completed"
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
            self._ends.sources_off(request, context)
            return
        # Its frames come from the source, not the client: only a client that takes no
        # prediction is idle here.
        stream = self._new_stream(
            request.options, request.source, context.peer(), client_sends=False
        )
        self._idle.watch(stream, context)
        with self._ends.ending("WatchSource", stream, context) as ending:
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
            shown_name(options.stream_name or default_name),
            options.top_k or self._cfg.default_top_k,
            meta.labels,
            meta.background_label,
            meta.fps,
            self._cfg.queue_frames,
            client_sends=client_sends,
        )
        stream.address = client_address(peer)
        self._ends.opened(stream)
        return stream

    def _configure(self, stream: Stream, options: pb.StreamOptions) -> None:
        stream.configure(
            shown_name(options.stream_name) if options.stream_name else "", options.top_k
        )

    def _admit(self, stream: Stream) -> None:
        """Gives the stream a place and its state: a client's stream on its first frame, not
        when its call opens; a watched source's when its call opens."""
        self._places.take(stream)
        stream.state = self._batcher.model.zero_state(1)
        self._ends.admitted(stream)


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
