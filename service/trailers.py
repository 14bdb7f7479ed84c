"""What a StreamFrames call carries beyond its messages: the trailing metadata keys.

The .proto cannot declare metadata, so the server and the clients of this
package read the key from here.
"""

from collections.abc import Iterable
from typing import Protocol

# A call's trailer, however it ended: frames the server skipped (resampled, or dropped
# behind) that no Prediction's skipped_frames counts, after the last one.
SKIPPED_FRAMES = "actionstream-skipped-frames"
# And, when the server ended the call early, frames it had taken for the model and
# never answered (waiting, or in a batch): lost with the call, where skipped ones were
# dropped on purpose.
UNANSWERED_FRAMES = "actionstream-unanswered-frames"
# Beside an error status the server gave: why, in one word a program can act on (the
# reasons of the rejected-frames counter for a refused frame, else those of the
# streams-ended counter), where the code alone is several things: RESOURCE_EXHAUSTED
# is a frame too large (`too_many_bytes`) or a server full (`refused`).
REASON = "actionstream-reason"


class Counts(Protocol):
    """What a trailer counts (a service Stream; clients import this module without it)."""

    @property
    def skipped_since_answer(self) -> int: ...

    @property
    def unanswered(self) -> int: ...


def trailer(stream: Counts, reason: str | None = None) -> tuple[tuple[str, str], ...]:
    """A StreamFrames or WatchSource call's trailing metadata: its skipped frames, its
    unanswered ones when there are any, and the server's reason when it gave one."""
    keys = [(SKIPPED_FRAMES, str(stream.skipped_since_answer))]
    if stream.unanswered:
        keys.append((UNANSWERED_FRAMES, str(stream.unanswered)))
    if reason:
        keys.append((REASON, reason))
    return tuple(keys)


def skipped_in(trailer: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The SKIPPED_FRAMES count in a call's trailing metadata (0 when absent)."""
    for key, value in trailer or ():
        if key == SKIPPED_FRAMES and isinstance(value, str) and value.isdigit():
            return int(value)
    return 0


def reason_in(trailer: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The REASON in a call's trailing metadata (None when absent)."""
    for key, value in trailer or ():
        if key == REASON and isinstance(value, str):
            return value
    return None
