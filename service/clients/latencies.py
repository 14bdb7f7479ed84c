"""The latencies a client measured, for its summary's percentiles, in bounded memory."""

from __future__ import annotations

import random

import numpy as np


class Latencies:
    """Every latency up to `size` of them, then a uniform sample of that many (reservoir
    sampling), so that a stream of any length keeps its percentiles in bounded memory."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._kept: list[float] = []
        self._seen = 0
        self._random = random.Random(0)

    def add(self, ms: float) -> None:
        self._seen += 1
        if len(self._kept) < self._size:
            self._kept.append(ms)
            return
        slot = self._random.randrange(self._seen)
        if slot < self._size:
            self._kept[slot] = ms

    def percentiles(self, qs: list[float]) -> list[float] | None:
        if not self._kept:
            return None
        return [float(v) for v in np.percentile(self._kept, qs)]
