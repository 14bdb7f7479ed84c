"""Where a server's streams stand before and while they are served.

A StreamFrames call that has sent no frame yet waits, holding no place: a
camera sends its first frame as soon as its call opens, so only a bounded
number may wait (`max_waiting_calls`), and the one that has waited longest
is ended to make room for the next. A stream takes one of `max_streams`
places with its first frame (WatchSource: when its call opens), and gives it
back when its call ends; where `max_per_address` is set, no client address
holds more of them than that, so one host cannot take every place.
"""

from __future__ import annotations

import urllib.parse

import grpc

from actionstream.service.endpoint.refusals import Refused
from actionstream.service.inference.streams import Stream
from actionstream.service.telemetry.metrics import Metrics


def client_address(peer: str) -> str:
    """The client's host in gRPC's name for a call's far end: "ipv4:10.1.2.3:5678" ->
    "10.1.2.3", "ipv6:%5B::1%5D:5678" (gRPC escapes the brackets) -> "::1"; any other
    kind (a Unix socket) as it is."""
    kind, _, where = peer.partition(":")
    if kind == "ipv4":
        return where.rpartition(":")[0]
    if kind == "ipv6":
        return urllib.parse.unquote(where).rpartition(":")[0].strip("[]")
    return peer


class Places:
    """The streams waiting for a first frame, and the places of those being served."""

    def __init__(
        self,
        max_streams: int,
        max_waiting: int,
        metrics: Metrics,
        max_per_address: int = 0,
        worker: bool = False,
    ) -> None:
        """`worker`: one of `serve --workers`' processes, whose limits are its own."""
        self._share = ", this worker's share of it" if worker else ""
        self._own = "; with --workers, each process's" if worker else ""
        self._max_streams = max_streams
        self._max_waiting = max_waiting
        self._max_per_address = max_per_address  # 0: no such limit
        self._metrics = metrics
        self._taken = 0
        self._by_address: dict[str, int] = {}  # places held, by client address
        self._waiting: dict[Stream, None] = {}  # oldest first

    def wait(self, stream: Stream) -> None:
        """Lines the call up for its first frame, ending the longest-waiting call when
        `max_waiting` already wait. The oldest goes, not the newcomer: a flood of silent
        calls evicts its own calls, not a camera's (unless the flood opens `max_waiting`
        calls in the moment between a camera's call and its first frame)."""
        while len(self._waiting) >= self._max_waiting:
            oldest = next(iter(self._waiting))
            self.stop_waiting(oldest)
            oldest.fail(
                Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"no frame yet, and the server was at its limit of {self._max_waiting} "
                    "calls waiting for a first frame (max_waiting_calls): the "
                    "longest-waiting call was ended to make room",
                    "evicted",
                )
            )
        self._waiting[stream] = None
        self._metrics.waiting_calls.inc()

    def stop_waiting(self, stream: Stream) -> None:
        if self._waiting.pop(stream, False) is None:  # it was waiting
            self._metrics.waiting_calls.dec()

    def take(self, stream: Stream) -> None:
        """Gives the stream a place; raises Refused when every place is taken."""
        self.stop_waiting(stream)
        if self._taken >= self._max_streams:
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the server is at its limit of {self._max_streams} concurrent streams "
                f"(max_streams{self._share}); retry later",
                "refused",
            )
        if self._max_per_address:
            held = self._by_address.get(stream.address, 0)
            if held >= self._max_per_address:
                raise Refused(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{stream.address} holds {held} streams, this server's limit for one "
                    f"address (max_streams_per_address{self._own}); end one or retry later",
                    "refused",
                )
            self._by_address[stream.address] = held + 1
        self._taken += 1
        self._metrics.active_streams.inc()
        stream.admitted = True

    def give_back(self, stream: Stream) -> bool:
        """Frees whatever the stream held; True if it had a place."""
        self.stop_waiting(stream)
        if not stream.admitted:
            return False
        stream.admitted = False
        self._taken -= 1
        if self._max_per_address:
            held = self._by_address.pop(stream.address) - 1
            if held:
                self._by_address[stream.address] = held
        self._metrics.active_streams.dec()
        return True
