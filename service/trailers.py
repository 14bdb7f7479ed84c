"""What a StreamFrames call carries beyond its messages: the trailing metadata keys.

The .proto cannot declare metadata, so the server and the clients of this
package read the key from here.
"""

from collections.abc import Iterable

# A completed call's trailer: frames the server skipped after its last prediction
# (resampled or dropped behind), which no Prediction's skipped_frames counts.
SKIPPED_FRAMES = "actionstream-skipped-frames"


def skipped_in(trailer: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The SKIPPED_FRAMES count in a call's trailing metadata (0 when absent)."""
    for key, value in trailer or ():
        if key == SKIPPED_FRAMES and isinstance(value, str) and value.isdigit():
            return int(value)
    return 0
