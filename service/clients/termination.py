"""SIGTERM taken by the clients (`stream`, `watch`) as they take Ctrl-C.

A client stopped by a supervisor (systemd, a container's stop, `timeout`) has
as much to say as one stopped at a terminal: the summary so far, and the
source let go. Python's default for SIGTERM ends the process without either;
here it raises KeyboardInterrupt instead, and the exit code stays the
signal's own, 143 (128 + 15), where Ctrl-C's is 130.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class Termination:
    """While entered (on the main thread), SIGTERM raises KeyboardInterrupt."""

    def __init__(self) -> None:
        self.terminated = False
        self._before: signal.Handlers | object = None

    def __enter__(self) -> Termination:
        if threading.current_thread() is threading.main_thread():
            self._before = signal.signal(signal.SIGTERM, self._interrupt)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._before is not None:
            signal.signal(signal.SIGTERM, self._before)  # type: ignore[arg-type]

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.terminated = True
        raise KeyboardInterrupt

    @property
    def code(self) -> int:
        """The exit code of a stop: SIGTERM's 143, or Ctrl-C's 130."""
        return 143 if self.terminated else 130
