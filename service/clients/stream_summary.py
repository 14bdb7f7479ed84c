"""What one `stream` run comes to: its summary, its error, and how both are printed.

`stream` prints the summary as text, or as the last JSON line with `--json`;
its counts are named as `watch`'s (service/clients/watch.py) where they mean the
same.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class StreamSummary:
    """How one stream went, from the client's side."""

    frames_sent: int
    frames_answered: int
    accuracy: float | None  # top-1 over the scored frames; None without labels or none scored
    # Send -> prediction received; None if nothing was answered. Over every answered frame
    # up to LATENCY_SAMPLE of them, then over a uniform sample of that many.
    p50_ms: float | None
    p99_ms: float | None
    interrupted: bool = False  # stopped with Ctrl-C before the source ended
    frames_scored: int | None = None  # answered frames the labels cover; None without labels
    frames_skipped: int = 0  # sent, and skipped by the server (resampled to the model's rate)
    reconnects: int = 0  # new calls that answered, after the server went away
    # False when Ctrl-C left the source inside an OpenCV call (a stalled network source
    # waits out OpenCV's 30-s timeout): end the process with os._exit, as `stream` does,
    # since an interpreter that exits under that thread aborts.
    source_released: bool = True
    frames_read: int = 0  # from the source
    frames_unsent: int = 0  # read, and not sent: above the model's rate, without pacing

    @property
    def frames_lost(self) -> int:
        """Read and meant to be sent, and neither answered nor reported skipped: in flight,
        or being read, when a call ended, or a live source's, let go while reconnecting."""
        return max(
            0, self.frames_read - self.frames_unsent - self.frames_answered - self.frames_skipped
        )


class StreamError(Exception):
    """An expected failure (bad source, unreachable server, refused stream), in words;
    `summary` is how the stream went until then, when some of it was answered.
    `source_released` is False when a read stalled on a network source was not waited
    out: the process must then end with os._exit (see StreamSummary)."""

    def __init__(self, message: str, summary: StreamSummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary
        self.source_released = True


def summary_record(summary: StreamSummary) -> dict[str, Any]:
    """The summary's JSON fields (service/clients/output.py's report)."""
    # Every count the summary has, by its field's name; not whether the source was let go
    # (what the process does about it is its exit).
    record: dict[str, Any] = dataclasses.asdict(summary)
    del record["source_released"]
    record["frames_lost"] = summary.frames_lost
    return record


def print_summary(summary: StreamSummary) -> None:
    frames = f"frames: {summary.frames_sent} sent, {summary.frames_answered} answered"
    if summary.frames_unsent:
        frames = (
            f"frames: {summary.frames_read} read, {summary.frames_unsent} not sent (above the "
            f"model's frame rate, which the server would skip), {summary.frames_sent} sent, "
            f"{summary.frames_answered} answered"
        )
    if summary.frames_lost:
        frames += f", {summary.frames_lost} lost when a call ended or while reconnecting"
    if summary.frames_skipped:
        frames += (
            f", {summary.frames_skipped} skipped by the server (above the model's frame rate, "
            "or behind when it was busy)"
        )
    print(frames)
    if summary.reconnects:
        print(
            f"reconnected: {summary.reconnects} new call(s) after the server went away "
            "(each new stream started from a zero state)"
        )
    scored, answered = summary.frames_scored, summary.frames_answered
    if scored is not None and answered:
        if summary.accuracy is None:
            print(f"accuracy: not scored: none of the {answered} answered frames has a label")
        else:
            unlabelled = f"; {answered - scored} had no label" if scored < answered else ""
            print(
                f"accuracy: {summary.accuracy:.1%} (top-1, per frame; "
                f"scored {scored} of {answered} answered frames{unlabelled})"
            )
    if summary.p50_ms is not None and summary.p99_ms is not None:
        print(
            f"latency (send to prediction): p50 {summary.p50_ms:.1f} ms, "
            f"p99 {summary.p99_ms:.1f} ms"
        )
