"""A stream's current action and its start and end events, from per-frame scores."""

from __future__ import annotations

import math

import numpy as np

from actionstream.v1 import actionstream_pb2 as pb


class ActionTracker:
    """The current action from per-frame probabilities: smoothed, with hysteresis.

    Probabilities are averaged exponentially (time constant `TAU_S`); an
    action starts when its smoothed probability reaches `ENTER` and is the
    highest, and it lasts until its own falls below `EXIT`. The gap between
    the two keeps a borderline score from flickering an action on and off.
    The average starts from nothing going on (the background label, or every
    label alike): seeded with a stream's first frame, one confident guess from
    a zero state started an action at once, and ended it frames later.
    """

    TAU_S = 0.3
    ENTER = 0.6
    EXIT = 0.4

    def __init__(self, labels: tuple[str, ...], background: str | None, fps: float) -> None:
        self._labels = labels
        self._background = background
        self._idle = labels.index(background) if background in labels else None
        self._alpha = 1 - math.exp(-1 / (fps * self.TAU_S))
        self._smoothed: np.ndarray | None = None
        self._current: int | None = None  # the action going on, None when none (or background)
        self._since = 0  # sequence number it started on

    @property
    def action(self) -> str:
        if self._current is None:
            return self._background or ""
        return self._labels[self._current]

    def update(self, probs: np.ndarray, sequence: int) -> list[pb.ActionEvent]:
        if self._smoothed is None:
            self._smoothed = np.full(len(self._labels), 1 / len(self._labels), probs.dtype)
            if self._idle is not None:
                self._smoothed[:] = 0
                self._smoothed[self._idle] = 1
        self._smoothed += self._alpha * (probs - self._smoothed)
        s = self._smoothed
        events: list[pb.ActionEvent] = []
        if self._current is not None and s[self._current] < self.EXIT:
            events.append(self._event(pb.ActionEvent.KIND_END, self._current))
            self._current = None
        best = int(s.argmax())
        if best != self._current and s[best] >= self.ENTER:
            if self._current is not None:
                events.append(self._event(pb.ActionEvent.KIND_END, self._current))
            self._current = None if best == self._idle else best
            self._since = sequence
            if self._current is not None:
                events.append(self._event(pb.ActionEvent.KIND_START, self._current))
        return events

    def _event(self, kind: pb.ActionEvent.Kind, index: int) -> pb.ActionEvent:
        return pb.ActionEvent(kind=kind, label=self._labels[index], start_sequence=self._since)
