"""How the service's calls end: the status and trailer a call ends with, counted,
logged within a budget, and everything its stream held freed.

The servicer (servicer.py) runs a call's handler inside `ending`, which turns
what ends it (a refusal, a cancellation, a fault of the server's own, the grace
period's end) into the client's status and the metrics, and then closes the
stream: its place, its waiting frames, its idle watch. Each stream's
"opened" and "ended" lines are written here too, so that the rules for what an
operator reads about a stream sit in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import grpc

from actionstream.service.config import ServeConfig
from actionstream.service.credentials import hide_credentials
from actionstream.service.endpoint.idle_sweep import IdleSweep
from actionstream.service.endpoint.places import Places
from actionstream.service.endpoint.refusals import (
    Refused,
    as_refused,
    deadline_passed,
    sources_off,
)
from actionstream.service.inference.batcher import Batcher
from actionstream.service.inference.streams import FrameRejected, Stream
from actionstream.service.sources.video_source import MAX_SOURCE_CHARS
from actionstream.service.telemetry.logs import Throttle
from actionstream.service.telemetry.metrics import EndReason, Metrics
from actionstream.service.text import printable
from actionstream.service.trailers import REASON, trailer
from actionstream.v1 import actionstream_pb2 as pb

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


class CallEnds:
    """Ends the calls of one server, and keeps the streams whose calls are open."""

    def __init__(
        self,
        cfg: ServeConfig,
        metrics: Metrics,
        places: Places,
        idle: IdleSweep,
        batcher: Batcher,
    ) -> None:
        self._metrics = metrics
        self._places = places
        self._idle = idle
        self._batcher = batcher
        self._cut_off = False
        self._open: set[Stream] = set()  # every stream whose call is open
        self._turned_away = Throttle()
        burst = max(STREAM_LINES_BURST, 2 * cfg.max_streams)
        self._stream_lines = Throttle(STREAM_LINES_PER_S, burst)
        self._trouble_lines = Throttle(STREAM_LINES_PER_S, burst)

    def opened(self, stream: Stream) -> None:
        """A call is open for `stream` (it takes a place only with its first frame)."""
        self._open.add(stream)

    def admitted(self, stream: Stream) -> None:
        """`stream` took a place: its "opened" line, within the budget."""
        left_out = self._stream_lines.take()
        if left_out is not None:
            logger.info(
                "stream %d %s opened (top_k=%d)%s",
                stream.id,
                stream.name,
                stream.top_k,
                _left_out(left_out),
                extra=about(stream),
            )

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

    def sources_off(self, request: pb.SourceRequest, context: grpc.aio.ServicerContext) -> None:
        """Refuses WatchSource on a server without --allow-sources as the allowlist
        refuses a source: counted, ended and logged under the same reason. No stream is
        opened for it, so its trailer holds the reason alone; its line spends the budget
        of streams that end in trouble, as the allowlist's refusals do, so a client
        calling in a loop cannot fill the disk."""
        refused = sources_off()
        self._refuse("WatchSource", refused, ((REASON, refused.told),), context)
        self._metrics.ended(refused.reason).inc()
        left_out = self._trouble_lines.take()
        if left_out is not None:
            name = shown_name(request.options.stream_name or request.source)
            logger.info(
                "stream %s refused (%s%s)%s",
                name,
                refused.reason,
                _told_why(refused),
                _left_out(left_out),
                extra={"stream": name},
            )

    @contextlib.contextmanager
    def ending(
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
        if (reason := self.cut_short(method, context)) is not None:
            return reason
        # A client that cancels, one whose connection dropped, and a message gRPC refused
        # for its size (the client gets RESOURCE_EXHAUSTED) all reach the handler the
        # same way in grpc.aio: the input ends, then the handler is cancelled.
        self._count_error(method, grpc.StatusCode.CANCELLED)
        return "cancelled"

    def cut_short(self, method: str, context: grpc.aio.ServicerContext) -> EndReason | None:
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
                    extra=about(stream),
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
                    extra=about(stream),
                )

    def _internal_error(
        self, method: str, stream: Stream, context: grpc.aio.ServicerContext
    ) -> None:
        """Ends a call that a fault of the server's own broke: the traceback goes to the log,
        the client gets INTERNAL and the stream's id to quote, never the exception's text."""
        logger.exception("%s failed", method, extra=about(stream))
        self._count_error(method, grpc.StatusCode.INTERNAL)
        context.set_trailing_metadata(trailer(stream, "error"))
        context.set_code(grpc.StatusCode.INTERNAL)
        context.set_details(
            f"internal server error; the server's log has it under stream id {stream.id}"
        )

    def _count_error(self, method: str, code: grpc.StatusCode) -> None:
        self._metrics.rpc_errors.labels(method=method, code=code.name).inc()


class _Ending:
    """How a call ended, for _close: "error" unless its handler or `ending` says otherwise."""

    reason: EndReason = "error"


def shown_name(name: str) -> str:
    """A stream's name as logs show it (Stream cuts it to NAME_LIMIT characters): without
    the secrets of a camera URL, which clients often name their streams by. Only as much
    of it as a source may hold is looked at: a client may send megabytes."""
    return hide_credentials(name, MAX_SOURCE_CHARS)


def about(stream: Stream) -> dict[str, object]:
    return {"stream": stream.name, "stream_id": stream.id}


def _told_why(refused: Refused) -> str:
    """What a refused client was told, for the end of its stream's line."""
    return f": {refused.code.name}: {printable(refused.details, 200)}"


def _left_out(count: int) -> str:
    """The end of a stream's line that says how many such lines the budget left out."""
    return f"; {count} stream lines left out before this one" if count else ""
