"""Log lines: client strings escaped and bounded; JSON lines carry the stream's name and id."""

from __future__ import annotations

import json
import logging

from actionstream.service.logs import JsonFormatter
from actionstream.service.streams import NAME_LIMIT, printable


def test_printable_escapes_and_bounds_client_strings() -> None:
    assert printable("loading-dock-cam-2") == "loading-dock-cam-2"
    assert printable("cam\nINFO forged") == "cam\\nINFO forged"
    assert printable("\x1b[31mred") == "\\x1b[31mred"
    long = printable("x" * 8_000_000)
    assert long == "x" * NAME_LIMIT + "…"


def test_json_lines_carry_the_stream() -> None:
    record = logging.LogRecord(
        "actionstream.service.servicer",
        logging.INFO,
        __file__,
        1,
        "stream %d %s opened",
        (7, "cam\\n2"),
        None,
    )
    record.stream, record.stream_id = "cam\\n2", 7
    line = JsonFormatter().format(record)
    assert "\n" not in line
    fields = json.loads(line)
    assert fields["message"] == "stream 7 cam\\n2 opened"
    assert (fields["stream"], fields["stream_id"], fields["level"]) == ("cam\\n2", 7, "INFO")
    assert fields["time"].endswith("Z")
