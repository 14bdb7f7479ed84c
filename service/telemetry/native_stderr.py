"""What native libraries print on stderr, turned into the server's own log lines.

libpng and libjpeg, under OpenCV, write a line straight to file descriptor 2
for every damaged image they meet ("Corrupt JPEG data: ...", "libpng error:
..."), whatever OpenCV's own log level. That is plain text in a JSON log, and
as many lines as a client sends damaged frames. In the server process fd 2
becomes a pipe: a thread reads it and logs each line through `logging`, so it
comes out in the log's format, at most `per_second` lines a second, counting
the rest. Python's own stderr (tracebacks, the log itself) keeps the real one.

A pipe read by a thread of the same process dies with it: whatever native
code writes to fd 2 as the process crashes can be lost. So faulthandler is
switched on, writing to the real stderr: a crash (SIGSEGV, SIGABRT, SIGBUS,
SIGFPE, SIGILL) leaves every thread's Python traceback there.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import select
import sys
import threading
import time

logger = logging.getLogger("actionstream.native")
LINE_LIMIT = 500  # characters of one native line that reach the log
# Native lines the server says again in its own words, left out: gRPC's for a port it
# cannot bind came before `serve`'s one line on why it cannot start (launch.bind_problem).
RESTATED = (b"] Failed to add port to server",)


def capture(per_second: int = 10) -> None:
    """Routes fd 2 through the relay thread; call once, before serving."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    previous = sys.stderr
    sys.stderr = os.fdopen(real, "w", buffering=1, errors="backslashreplace")
    faulthandler.enable(file=sys.stderr, all_threads=True)
    # Handlers made before this point hold the old stream, which now leads into the
    # pipe: a log line would come back round as a native one.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is previous:
            handler.setStream(sys.stderr)
    threading.Thread(
        target=_relay, args=(read_end, per_second), name="native-stderr", daemon=True
    ).start()


def _relay(read_end: int, per_second: int) -> None:
    limit = _RateLimit(per_second)
    pending = b""
    while True:
        # Wake at least once a second, so lines held back are counted even when none follow.
        readable, _, _ = select.select([read_end], [], [], 1.0)
        if not readable:
            limit.tick()
            continue
        chunk = os.read(read_end, 65536)
        if not chunk:
            return
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            if any(words in raw for words in RESTATED):
                continue
            line = raw.decode("utf-8", "backslashreplace").strip()
            if line:
                limit.log(line if line.isprintable() else line.encode("unicode_escape").decode())


class _RateLimit:
    """At most `per_second` lines logged in each second; how many more, once it is over."""

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        self._second = int(time.monotonic())
        self._logged = 0
        self._held_back = 0

    def tick(self) -> None:
        now = int(time.monotonic())
        if now == self._second:
            return
        if self._held_back:
            logger.warning("%d more lines from native libraries were not logged", self._held_back)
        self._second, self._logged, self._held_back = now, 0, 0

    def log(self, line: str) -> None:
        self.tick()
        if self._logged < self._per_second:
            self._logged += 1
            logger.warning("%s", line[:LINE_LIMIT])
        else:
            self._held_back += 1
