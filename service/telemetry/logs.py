"""The server's log lines: plain text by default, or one JSON object a line.

Lines about a stream carry its id and (escaped, bounded) name as `extra`
fields, so the JSON form has them as keys a log pipeline can filter on; the
text form has them in the message itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from actionstream.service.config import LogFormat

# LogRecord's own attributes: everything else on a record came in through `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # which of `serve --workers`' processes
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items() if k not in _STANDARD)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: whatever a client put in a name stays on one line.
        return json.dumps(line, ensure_ascii=True, default=str)


class Throttle:
    """At most `burst` lines at once and `per_second` after that, for lines that can come
    in floods (cameras retrying against a full server, a client opening and closing
    streams as fast as it can): the ones left out are counted, and the next line let
    through says how many. Their metrics count every one."""

    def __init__(self, per_second: float = 1.0, burst: int = 1) -> None:
        self._per_second = per_second
        self._burst = burst
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._held_back = 0

    def take(self) -> int | None:
        """None when this line is to be left out; else how many were left out since the
        last line let through."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_second)
        self._at = now
        if self._tokens < 1:
            self._held_back += 1
            return None
        self._tokens -= 1
        held_back, self._held_back = self._held_back, 0
        return held_back


def announce(message: str, fmt: LogFormat) -> None:
    """The line that says the server is up: on stdout for a person reading a terminal, or
    as a log line when the logs are JSON, so that a log pipeline sees only JSON."""
    if fmt == "json":
        logging.getLogger("actionstream").info("%s", message)
    else:
        print(message, flush=True)


def cannot_serve(message: str, fmt: LogFormat) -> None:
    """Why the server could not start: one line on stderr for a person, or a JSON log
    line at ERROR when the logs are JSON, so that a log pipeline sees why too."""
    if fmt == "json":
        logging.getLogger("actionstream").error("actionstream serve: %s", message)
    else:
        print(f"actionstream serve: {message}", file=sys.stderr)


def configure(level: str, fmt: LogFormat) -> None:
    """Sends the root logger's lines to stderr at `level`, as text or JSON."""
    handler = logging.StreamHandler()
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        # The pid tells `serve --workers`' processes apart.
        formatter = logging.Formatter(
            "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
        )
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
