"""What `stream` and `watch` print for each prediction: a line to read, or with
`--json` one JSON object a line for another program to read.

A JSON line is either `{"prediction": {...}}` or, last, `{"summary": {...}}`.
The prediction's fields are the proto's, by their proto names, with numbers as
JSON numbers (protobuf's own JSON mapping writes 64-bit integers as strings)
and event kinds as "start" and "end"; the client adds what only it knows
(`latency_ms` from send to answer, `truth` from --labels). Errors stay on
stderr, so stdout stays parseable to its last line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from actionstream.v1 import actionstream_pb2 as pb

S = TypeVar("S")

_KINDS = {pb.ActionEvent.KIND_START: "start", pb.ActionEvent.KIND_END: "end"}


def events_text(prediction: pb.Prediction) -> str:
    """The actions that started and ended on this frame, as "  (ended a, started b)"."""
    changes = [
        f"{'started' if event.kind == pb.ActionEvent.KIND_START else 'ended'} {event.label}"
        for event in prediction.events
    ]
    return f"  ({', '.join(changes)})" if changes else ""


def prediction_record(prediction: pb.Prediction) -> dict[str, Any]:
    """A prediction as plain JSON values."""
    return {
        "sequence": prediction.sequence,
        "timestamp_us": prediction.timestamp_us,
        "top": [{"label": s.label, "probability": s.probability} for s in prediction.top],
        "action": prediction.action,
        "events": [
            {
                "kind": _KINDS.get(e.kind, "unspecified"),
                "label": e.label,
                "start_sequence": e.start_sequence,
            }
            for e in prediction.events
        ],
        "skipped_frames": prediction.skipped_frames,
        "latency_seconds": prediction.latency_seconds,
    }


def print_json(key: str, record: dict[str, Any]) -> None:
    """One JSON line, flushed: a program reading the pipe sees each as it comes."""
    print(json.dumps({key: _finite(record)}, ensure_ascii=False), flush=True)


def report(
    summary: S,
    as_json: bool,
    text: Callable[[S], None],
    record: Callable[[S], dict[str, Any]],
    error: str | None = None,
) -> None:
    """Prints a run's summary: as `text` prints it, or with `as_json` as the last JSON
    line, its fields by `record`, and the run's `error` when it failed (which the client
    says on stderr too)."""
    if not as_json:
        text(summary)
        return
    fields = record(summary)
    if error is not None:
        fields["error"] = error
    print_json("summary", fields)


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; json.dumps would write them anyway.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
