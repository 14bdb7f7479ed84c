"""`stream --labels`: a source's true labels checked against the model and the source.

The CSV itself is read by actionstream/frame_labels.py, as `evaluate` reads it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from actionstream.service.clients.stream_summary import StreamError


def spans(frames: list[int], most: int = 3) -> str:
    """Sorted frame numbers as runs: "3, 7-9, 100-119" (the first `most` runs, then "...")."""
    runs: list[list[int]] = []
    for i in frames:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:most])
    return text + (", ..." if len(runs) > most else "")


def warn_uncovered(path: str, truth: dict[int, str], frames: int) -> None:
    """Warns, before streaming, of source frames 0..frames-1 the labels leave out.

    A warning, not a refusal: the count is the container's, which some estimate from
    duration and frame rate, and a frame that is never read needs no label. The
    summary says how many answered frames were scored.
    """
    missing = [i for i in range(frames) if i not in truth]
    if missing:
        print(
            f"warning: {path}: no label for {len(missing)} of the {frames} source frames to "
            f"stream (frame {spans(missing)}); they will not be scored",
            file=sys.stderr,
        )


def check_names(path: str, truth: dict[int, str], model_labels: Sequence[str]) -> None:
    """Refuses labels the model cannot predict, as `actionstream evaluate` does."""
    unknown = sorted(set(truth.values()) - set(model_labels))
    if unknown:
        raise StreamError(
            f"{path}: label(s) {', '.join(map(repr, unknown))} are not the model's "
            f"(it knows {', '.join(model_labels)})"
        )
