"""Ends the calls that hold the server's resources without using them.

Once a second (or a quarter of the timeout, when shorter) the sweep ends a
stream that sent no frame for `idle_timeout_seconds`, and one whose client
took no prediction for as long: a client that stopped reading is noticed
only once its unread predictions fill gRPC's flow-control window, and its
handler is then stuck in gRPC's write, which only cancelling its task ends.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from actionstream.service.endpoint.refusals import Refused
from actionstream.service.inference.streams import Stream


class IdleSweep:
    """The open calls' streams, and the task that ends the idle ones."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._open: dict[Stream, asyncio.Task[object] | None] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, stream: Stream) -> None:
        """Puts the calling handler's stream under the sweep (started with the first)."""
        if self._task is None:
            self._task = asyncio.create_task(self._sweep(), name="idle-sweep")
        self._open[stream] = asyncio.current_task()

    def forget(self, stream: Stream) -> None:
        self._open.pop(stream, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _sweep(self) -> None:
        timeout = self._timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for stream, task in list(self._open.items()):
                if stream.failure is not None:
                    continue
                if stream.writing_since is not None and now - stream.writing_since > timeout:
                    stream.fail(
                        Refused(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"took no prediction for {timeout:g} s (idle_timeout_seconds); "
                            "the stream was ended to free its place",
                            "not_reading",
                        )
                    )
                    if task is not None:
                        task.cancel()
                elif (
                    not stream.input_done
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
