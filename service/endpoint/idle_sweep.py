"""Ends the calls that hold the server's resources without using them.

Once a second (or a quarter of the timeout, when shorter) the sweep ends a
stream that sent no frame for `idle_timeout_seconds`, and one whose client
took no prediction for as long: a client that stopped reading is noticed
only once its unread predictions fill gRPC's flow-control window, and its
handler is then stuck in gRPC's write, which only cancelling its task ends.
A cancelled handler sends no status, though: grpc.aio takes the cancellation
as the call's end, and the client, reading again, got its last predictions
and then waited forever, its call open on the server too. So the sweep sends
the call's status itself first (DEADLINE_EXCEEDED and the skipped-frames
trailer, after the predictions the client has yet to read), then cancels.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from actionstream.service.endpoint.refusals import Refused
from actionstream.service.inference.streams import Stream
from actionstream.service.trailers import trailer

logger = logging.getLogger(__name__)


class IdleSweep:
    """The open calls' streams, and the task that ends the idle ones."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._open: dict[Stream, _Call] = {}
        self._task: asyncio.Task[None] | None = None
        self._ending: set[asyncio.Task[None]] = set()  # statuses on their way

    def watch(self, stream: Stream, context: grpc.aio.ServicerContext) -> None:
        """Puts the calling handler's stream under the sweep (started with the first)."""
        if self._task is None:
            self._task = asyncio.create_task(self._sweep(), name="idle-sweep")
        self._open[stream] = _Call(asyncio.current_task(), context)

    def forget(self, stream: Stream) -> None:
        self._open.pop(stream, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for ending in self._ending:
            ending.cancel()
        await asyncio.gather(*self._ending, return_exceptions=True)

    async def _sweep(self) -> None:
        timeout = self._timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for stream, call in list(self._open.items()):
                if stream.failure is not None:
                    continue
                if stream.writing_since is not None and now - stream.writing_since > timeout:
                    refused = Refused(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"took no prediction for {timeout:g} s (idle_timeout_seconds); "
                        "the stream was ended to free its place",
                        "not_reading",
                    )
                    stream.fail(refused)
                    ending = asyncio.create_task(_send_status(call.context, refused, stream))
                    self._ending.add(ending)
                    ending.add_done_callback(self._ending.discard)
                    if call.task is not None:
                        call.task.cancel()
                elif (
                    stream.awaits_frames
                    and stream.writing_since is None
                    and now - stream.last_activity > timeout
                ):
                    # A call without a first frame holds no place, only a waiting slot.
                    freed = "its place" if stream.admitted else "its slot among waiting calls"
                    stream.fail(
                        Refused(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"no frame for {timeout:g} s (idle_timeout_seconds); the stream "
                            f"was ended to free {freed}",
                            "idle",
                        )
                    )


@dataclass(frozen=True)
class _Call:
    task: asyncio.Task[object] | None  # the handler's
    context: grpc.aio.ServicerContext


async def _send_status(context: grpc.aio.ServicerContext, refused: Refused, stream: Stream) -> None:
    """The call's status and trailer, queued behind the predictions gRPC holds for the
    client; whatever this meets, the call is over for the server."""
    try:
        await context.abort(refused.code, refused.details, trailer(stream, refused.told))
    except grpc.aio.AbortError:
        pass  # how abort() says it has sent the status
    except Exception:  # the client went away meanwhile: gRPC refuses the status
        logger.debug("stream %d: no status sent on ending it", stream.id, exc_info=True)
