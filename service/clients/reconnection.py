"""When `stream` and `watch` open a new call after the server (or its source) went away.

Both clients follow one rule. A call that ends with UNAVAILABLE after something
was answered starts an outage: the server restarted, drained or was replaced, or
the source it watched was lost, and a new call may reach it or its successor.
Before any answer, UNAVAILABLE is a wrong address or a server that is down, said
at once. While an outage lasts (at most `limit_s`, counted from its first failed
call), other codes that a rollout or a rebooting camera gives may pass as well;
which ones is the client's (`passing`). Any answer ends the outage, so the limit
is per outage, not per run.
"""

from __future__ import annotations

import enum
import random
import sys
import time

import grpc

# Pings that find a server gone without a word (its node lost, the network cut): no
# connection reset comes then, and without them the call would wait on TCP for many
# minutes. The server takes pings this often (grpc.http2.min_ping_interval_without_data_ms).
KEEPALIVE = [("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 10_000)]
# Between tries: about this long, spread at random by half either way, so that the
# many cameras a restarted server dropped do not all come back at the same instant.
PAUSE_S = 1.0


def pause_s(left_s: float) -> float:
    """How long to wait before the next try, at most `left_s`."""
    return max(0.0, min(PAUSE_S * random.uniform(0.5, 1.5), left_s))


# Reasons a new call would meet again (a frame too large is RESOURCE_EXHAUSTED, like a
# full server, which a new call may find free).
_NEVER_PASSING = frozenset({"too_many_bytes"})


class Next(enum.Enum):
    """What follows a failed call."""

    FAIL = enum.auto()  # not worth a new call: the run fails with the call's own error
    GIVE_UP = enum.auto()  # worth one, but the outage has lasted its limit
    TRY = enum.auto()  # a new call, after wait()


class Reconnection:
    """One client's outages: whether to try again, and when to give up."""

    def __init__(self, limit_s: float, passing: frozenset[grpc.StatusCode]) -> None:
        self.limit_s = limit_s
        self._passing = passing
        self._until: float | None = None  # set while away

    @property
    def away(self) -> bool:
        return self._until is not None

    def back(self) -> None:
        """An answer came: the outage, if any, is over."""
        self._until = None

    def may_try(self, code: grpc.StatusCode, resumable: bool, reason: str | None = None) -> bool:
        """Whether a call that ended with `code` (and the server's `reason` for it, from
        the trailer) is worth a new one; `resumable` when something was answered and
        there is more to come (the client's to say)."""
        if self.limit_s <= 0 or not resumable or reason in _NEVER_PASSING:
            return False
        return code == grpc.StatusCode.UNAVAILABLE or (self.away and code in self._passing)

    def begins_outage(self) -> bool:
        """After a failed call: True when it starts an outage (the time to say so), whose
        clock starts then."""
        if self._until is not None:
            return False
        self._until = time.monotonic() + self.limit_s
        return True

    def after_failure(
        self, code: grpc.StatusCode, resumable: bool, outage_line: str, reason: str | None = None
    ) -> Next:
        """What follows a call that ended with `code` (see may_try). When the failure
        starts an outage, `outage_line` says so on stderr, in the client's words."""
        if not self.may_try(code, resumable, reason):
            return Next.FAIL
        if self.begins_outage():
            print(outage_line, file=sys.stderr, flush=True)
        return Next.GIVE_UP if self.over else Next.TRY

    @property
    def over(self) -> bool:
        """The outage has lasted its limit: give up."""
        return self._until is not None and time.monotonic() >= self._until

    def wait(self) -> None:
        """Sleeps before the next try, never past the outage's limit."""
        if self._until is not None:
            time.sleep(pause_s(self._until - time.monotonic()))
