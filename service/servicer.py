"""The ActionRecognition gRPC service: thin glue from requests to the model and back.

Per frame: decode in a worker thread (OpenCV releases the GIL, so decodes of
different streams overlap), one model step on the inference thread, then the
prediction. A bad frame ends its own RPC with a status naming the frame and
the problem; other streams never notice.

Refusals end an RPC by raising `_Refused`, which `_outcome` turns into the
call's status as the handler returns, rather than by `context.abort()`:
grpc.aio sends an abort's status before the handler unwinds, so a client
could see its error before the stream's slot was freed and the error counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import typing
from collections.abc import AsyncIterator

import grpc
import numpy as np

from actionstream.service.config import ServeConfig
from actionstream.service.frames import FrameDecoder, FrameError, RejectReason
from actionstream.service.inference import InferenceWorker
from actionstream.service.metrics import Metrics
from actionstream.service.sources import AsyncVideoSource, SourceError, SourceNotFound
from actionstream.service.streams import Stream
from actionstream.v1 import actionstream_pb2 as pb
from actionstream.v1 import actionstream_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)


# A frame over --max-frame-bytes gets the code gRPC itself gives a message over
# its size limit, so a client sees one answer for "too big" wherever the line
# is drawn; every other bad frame is the client's mistake to fix.
_REFUSAL_CODES: dict[RejectReason, grpc.StatusCode] = {
    reason: grpc.StatusCode.INVALID_ARGUMENT for reason in typing.get_args(RejectReason)
} | {"too_many_bytes": grpc.StatusCode.RESOURCE_EXHAUSTED}


class _Refused(Exception):
    """Ends the RPC with `code` and `details` (see the module docstring)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class ActionRecognition(pb_grpc.ActionRecognitionServicer):
    """Serves one model to many streams; each stream's state lives as long as its RPC."""

    def __init__(self, cfg: ServeConfig, worker: InferenceWorker, metrics: Metrics) -> None:
        self._cfg = cfg
        self._worker = worker
        self._metrics = metrics
        meta = worker.model.metadata
        self._decoder = FrameDecoder(
            meta.height, meta.width, cfg.max_frame_bytes, cfg.max_frame_pixels
        )
        self._active = 0

    async def StreamFrames(
        self, request_iterator: AsyncIterator[pb.FrameRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Prediction]:
        async with self._outcome("StreamFrames", context), self._admit():
            stream: Stream | None = None
            async for request in request_iterator:
                received = time.perf_counter()
                if stream is None:
                    stream = self._open(request.options, context.peer())
                    if not request.HasField("frame"):
                        continue  # options alone
                self._metrics.frames_received.inc()
                sequence = stream.next_sequence(request.frame.sequence)
                try:
                    image = await asyncio.to_thread(self._decode, request.frame)
                except FrameError as e:
                    self._metrics.frames_rejected.labels(e.reason).inc()
                    logger.info("stream %s: rejected frame %d: %s", stream.name, sequence, e)
                    raise _Refused(_REFUSAL_CODES[e.reason], f"frame {sequence}: {e}") from e
                timestamp_us = request.frame.timestamp_us
                yield await self._predict(stream, image, sequence, timestamp_us, received)
            if stream is not None:
                logger.info("stream %s ended after %d frames", stream.name, stream.frames)

    async def WatchSource(
        self, request: pb.SourceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Prediction]:
        # A file is read as fast as the model steps through it; a camera or URL
        # at its own rate. No reconnecting and no sharing between watchers yet.
        async with self._outcome("WatchSource", context):
            if not self._cfg.allow_sources:
                raise _Refused(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "WatchSource is disabled on this server, because it lets clients make the "
                    "server open files, cameras and URLs; start it with --allow-sources "
                    "(or ACTIONSTREAM_ALLOW_SOURCES=true) on a trusted network to enable it",
                )
            async with self._admit():
                try:
                    source = await AsyncVideoSource.open(request.source)
                except SourceNotFound as e:
                    raise _Refused(grpc.StatusCode.NOT_FOUND, str(e)) from e
                except SourceError as e:
                    raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
                try:
                    stream = self._open(request.options, request.source)
                    # A source frame is "received" when OpenCV hands it over.
                    while (frame := await source.read()) is not None:
                        received = time.perf_counter()
                        timestamp_us = time.time_ns() // 1000
                        self._metrics.frames_received.inc()
                        image = await asyncio.to_thread(self._fit, frame)
                        sequence = stream.next_sequence(0)
                        yield await self._predict(stream, image, sequence, timestamp_us, received)
                    logger.info("source %s ended after %d frames", request.source, stream.frames)
                finally:
                    source.close()

    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInfo:
        meta = self._worker.model.metadata
        return pb.ModelInfo(
            labels=meta.labels,
            input_width=meta.width,
            input_height=meta.height,
            fps=meta.fps,
            background_label=meta.background_label or "",
            version=meta.version,
        )

    def _open(self, options: pb.StreamOptions, default_name: str) -> Stream:
        meta = self._worker.model.metadata
        state = self._worker.model.zero_state(1)
        stream = Stream.open(options, meta.labels, state, self._cfg.default_top_k, default_name)
        logger.info("stream %s opened (top_k=%d)", stream.name, stream.top_k)
        return stream

    def _decode(self, frame: pb.Frame) -> np.ndarray:
        start = time.perf_counter()
        image = self._decoder.decode(frame)
        self._metrics.decode.observe(time.perf_counter() - start)
        return image

    def _fit(self, frame: np.ndarray) -> np.ndarray:
        # OpenCV has already decoded a source's frame while reading it, so only resizing is timed.
        start = time.perf_counter()
        image = self._decoder.fit(frame)
        self._metrics.decode.observe(time.perf_counter() - start)
        return image

    async def _predict(
        self, stream: Stream, image: np.ndarray, sequence: int, timestamp_us: int, received: float
    ) -> pb.Prediction:
        logits = await self._worker.step(stream, image)
        prediction = stream.prediction(logits, sequence, timestamp_us)
        prediction.latency_seconds = time.perf_counter() - received
        self._metrics.frames_processed.inc()
        self._metrics.frame_latency.observe(prediction.latency_seconds)
        self._metrics.predictions.labels(prediction.top[0].label).inc()
        return prediction

    @contextlib.asynccontextmanager
    async def _admit(self) -> AsyncIterator[None]:
        """Holds one of the max_streams places for the duration of the block."""
        if self._active >= self._cfg.max_streams:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._cfg.max_streams} concurrent streams "
                "(max_streams); retry later",
            )
        self._active += 1
        self._metrics.active_streams.inc()
        try:
            yield
        finally:
            self._active -= 1
            self._metrics.active_streams.dec()

    @contextlib.asynccontextmanager
    async def _outcome(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """Turns a refusal into the RPC's status; counts every RPC that does not end OK."""
        try:
            yield
        except _Refused as e:
            self._count_error(method, e.code)
            context.set_code(e.code)
            context.set_details(e.details)
        except asyncio.CancelledError:
            self._count_error(method, grpc.StatusCode.CANCELLED)
            raise
        except Exception:
            # grpc answers an unexpected exception with UNKNOWN; log it with its traceback.
            logger.exception("%s failed", method)
            self._count_error(method, grpc.StatusCode.UNKNOWN)
            raise

    def _count_error(self, method: str, code: grpc.StatusCode) -> None:
        self._metrics.rpc_errors.labels(method=method, code=code.name).inc()
