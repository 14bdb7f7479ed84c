"""What a StreamFrames call carries beyond its messages: the trailing metadata keys.

The .proto cannot declare metadata, so the server and the clients of this
package read the key from here.
"""

from collections.abc import Iterable

# A call's trailer, however it ended: frames the server skipped after its last
# prediction (resampled, dropped behind, or still waiting when the call ended), which
# no Prediction's skipped_frames counts.
SKIPPED_FRAMES = "actionstream-skipped-frames"
# Beside an error status the server gave: why, in one word a program can act on (the
# reasons of the rejected-frames counter for a refused frame, else those of the
# streams-ended counter), where the code alone is several things: RESOURCE_EXHAUSTED
# is a frame too large (`too_many_bytes`) or a server full (`refused`).
REASON = "actionstream-reason"


def trailer(skipped: int, reason: str | None = None) -> tuple[tuple[str, str], ...]:
    """A StreamFrames or WatchSource call's trailing metadata."""
    return ((SKIPPED_FRAMES, str(skipped)),) + (((REASON, reason),) if reason else ())


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
