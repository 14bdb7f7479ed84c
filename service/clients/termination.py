"""SIGTERM taken by the clients (`stream`, `watch`) as they take Ctrl-C.

A client stopped by a supervisor (systemd, a container's stop, `timeout`) has
as much to say as one stopped at a terminal: the summary so far, and the
source let go. Python's default for SIGTERM ends the process without either;
here it raises KeyboardInterrupt instead, and the exit code stays the
signal's own, 143 (128 + 15), where Ctrl-C's is 130.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType


class Termination:
    """While entered (on the main thread), SIGTERM raises KeyboardInterrupt.

    `once`: the first SIGTERM or SIGINT raises it and the second is only noted, for a
    client with nothing to let go of but its gRPC channel (`watch`). A second stop comes
    at once from `timeout`, which signals the process and then its group; raised inside
    gRPC's channel close, it lost the summary and left the channel to hang the exit. A
    third ends the process at once, should the ending hang. (`stream` takes a second
    stop as "do not wait for the source".)"""

    def __init__(self, once: bool = False) -> None:
        self.terminated = False
        self._once = once
        self._stops = 0
        self._before: dict[signal.Signals, signal.Handlers | object] = {}

    def __enter__(self) -> Termination:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT) if self._once else (signal.SIGTERM,):
                self._before[sig] = signal.signal(sig, self._interrupt)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for sig, before in self._before.items():
            if before is not None:  # None: a handler set outside Python, not to be restored
                signal.signal(sig, before)  # type: ignore[arg-type]

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self._stops += 1
        if self._once and self._stops == 2:
            return
        if self._once and self._stops > 2:
            os._exit(self.code)
        self.terminated = signum == signal.SIGTERM
        raise KeyboardInterrupt

    @property
    def code(self) -> int:
        """The exit code of a stop: SIGTERM's 143, or Ctrl-C's 130."""
        return 143 if self.terminated else 130


def is_stop(error: BaseException) -> bool:
    """Whether `error` is a stop: KeyboardInterrupt, or the RuntimeError one leaves when it
    is raised inside threading's Condition.wait (gRPC's, as a call is iterated) between
    its lock's release and its restore: the `with` around the wait then fails to release
    a lock it no longer holds ("cannot release un-acquired lock"), with the interrupt as
    its context. Seen about once in 120 stops of `stream` on a loaded machine."""
    if isinstance(error, KeyboardInterrupt):
        return True
    return isinstance(error, RuntimeError) and isinstance(error.__context__, KeyboardInterrupt)
