"""The one-cycle schedule of a training run: AdamW's learning rate and its beta1, together.

The rate rises by a cosine from --lr / 25 to --lr over the first 15% of the cycle,
then falls by a cosine to 1/250,000 of --lr by its end; beta1 mirrors it, from 0.95
down to 0.85 at the peak and back, so that the optimiser averages over fewer steps
while its steps are large. A run's first cycle with no time budget is torch's
OneCycleLR(pct_start=0.15), value for value: the bundled model was trained by it.

`OneCycle` does what OneCycleLR cannot: follow the clock as well as the steps
(`--minutes`: a run the clock cuts short has still cooled down), and start a cycle
from the rate a run has reached (a resume that changes --epochs or --minutes).

A new cycle's rate never jumps: its first step trains at the rate reached. One of
fewer than 7 steps has none in its rise (that ends at step 0.15 * steps - 1, before
step 0), where OneCycleLR's arithmetic would open with a step near --lr straight after
the floor; such a cycle only falls, from the rate reached to the floor by its last
step, beta1 mirroring (`falls_only`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# The share of a cycle its rise takes.
WARM_UP = 0.15
# --lr over the rate a first cycle rises from, and that rate over the cycle's floor
# (OneCycleLR's div_factor and final_div_factor).
START = 25.0
END = 1e4
# AdamW's beta1 at the peak rate, and at the low rates either side of it (OneCycleLR's
# base_momentum and max_momentum).
LOW_MOMENTUM = 0.85
HIGH_MOMENTUM = 0.95


@dataclass(frozen=True, order=True)
class Point:
    """Where a cycle stands: in its rise (`phase` 0) or its fall (1), `pct` of the way
    (0..1). Ordered as the cycle goes, so the later of two is their max."""

    phase: int
    pct: float


def by_steps(step: int, total: int) -> Point:
    """Where `step` (from 0) of a cycle of `total` steps stands, as OneCycleLR counts:
    the rise ends at step 0.15 * total - 1 and the fall at total - 1, so the last step
    trains at the floor; past it, the cycle stays there."""
    rise_end = float(WARM_UP * total) - 1
    if step <= rise_end:
        return Point(0, step / rise_end)
    return Point(1, min(1.0, (step - rise_end) / (total - 1 - rise_end)))


def falls_only(total: int, rise_from: float | None) -> bool:
    """Whether a cycle of `total` steps that began from a reached rate (`rise_from`) is
    too short to rise: its rise would end before its first step, which would then train
    near the peak. A first cycle (None) is OneCycleLR's, however short."""
    return rise_from is not None and WARM_UP * total - 1 < 0


def by_share(share: float) -> Point:
    """Where a cycle stands `share` (0..1) of the way through it, as of its time."""
    if share < WARM_UP:
        return Point(0, share / WARM_UP)
    return Point(1, min(1.0, (share - WARM_UP) / (1 - WARM_UP)))


def rate(point: Point, peak: float, rise_from: float | None = None) -> float:
    """The learning rate at `point` of a cycle up to `peak`, risen from `rise_from` times
    `peak` (None: a first cycle's peak / 25). OneCycleLR's own arithmetic, to the bit."""
    low = peak / START
    if point.phase == 0:
        return _cosine(low if rise_from is None else peak * rise_from, peak, point.pct)
    return _cosine(peak, low / END, point.pct)


def momentum(point: Point, rise_from: float | None = None) -> float:
    """beta1 at `point`: the mirror of the rate, 0.85 at the peak, 0.95 at the low ends.

    A cycle that rises from a rate the run reached (`rise_from`, a share of the peak)
    starts at the beta1 the mirror gives that rate between the floor and the peak, where
    a fall stands as it passes that rate: after a finished cycle, at the floor, that is
    0.95, where it left off. Both cosines then go alike, so beta1 stays the rate's mirror
    the whole cycle through."""
    if point.phase == 1:
        return _cosine(LOW_MOMENTUM, HIGH_MOMENTUM, point.pct)
    high = HIGH_MOMENTUM if rise_from is None else _mirror(rise_from)
    return _cosine(high, LOW_MOMENTUM, point.pct)


def fall_rate(pct: float, peak: float, rise_from: float) -> float:
    """The rate `pct` (0..1) of the way through a cycle too short to rise (`falls_only`):
    by a cosine from the rate reached, `rise_from` times `peak`, to the floor."""
    return _cosine(peak * rise_from, peak / START / END, pct)


def fall_momentum(pct: float, rise_from: float) -> float:
    """beta1 where `fall_rate` stands: the rate's mirror, as in every cycle (both cosines
    share `pct`, and the mirror is linear in the rate), to 0.95 at the floor."""
    return _cosine(_mirror(rise_from), HIGH_MOMENTUM, pct)


def _mirror(share: float) -> float:
    """The beta1 that mirrors a rate of `share` of the peak between the floor and it."""
    floor = 1 / (START * END)
    return LOW_MOMENTUM + (HIGH_MOMENTUM - LOW_MOMENTUM) * (1 - share) / (1 - floor)


def one_cycle(progress: float, rise_from: float | None = None) -> float:
    """The rate at `progress` (0..1) of a cycle, as a share of its peak."""
    return rate(by_share(progress), 1.0, rise_from)


def _cosine(start: float, end: float, pct: float) -> float:
    """From `start` to `end` by half a cosine as `pct` goes from 0 to 1 (OneCycleLR's
    _annealing_cos, term for term)."""
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


class OneCycle(torch.optim.lr_scheduler.LRScheduler):
    """One cycle of `steps` optimiser steps, from step `begin` of the run: the rate and
    beta1 of every parameter group as the cycle stands, stepped after each optimiser step.

    Why not torch's OneCycleLR: it cannot follow a clock, nor begin a cycle from a rate
    already reached; a LambdaLR in those cases left beta1 at AdamW's 0.9, so whether
    --minutes was given changed the optimiser, not only the schedule. One class for
    every case: with no `clock` and no `rise_from` it is OneCycleLR exactly.

    `clock`, if given, says the share of the cycle's time budget spent; the cycle then
    stands where the steps or the time put it, whichever is further on. It is not read
    at the cycle's first step, where it has timed only the run's setting up.

    A cycle from `rise_from` too short to rise (`falls_only`: under 7 steps) falls from
    that rate to the floor over its steps (or its time) instead, its first step at the
    rate reached and its last at the floor; one of a single step trains at the rate
    reached, having no later step to fall in.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        peak: float,
        steps: int,
        *,
        begin: int = 0,
        rise_from: float | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.peak = peak
        self.steps = steps
        self.begin = begin
        self.rise_from = rise_from
        self._clock = clock
        self.falls_only = falls_only(steps, rise_from)
        super().__init__(optimizer)

    def where(self) -> Point:
        """Where the cycle stands at the schedule's step."""
        step = max(0, self.last_epoch - self.begin)
        if self.falls_only:  # all fall, from the first step to the last (step 0 at pct 0)
            point = Point(1, min(1.0, step / max(1, self.steps - 1)))
        else:
            point = by_steps(step, self.steps)
        if self._clock is None or step == 0:
            return point
        clocked = by_share(self._clock())
        if self.falls_only:  # its time, too, is all fall
            clocked = Point(1, min(1.0, max(0.0, self._clock())))
        return max(point, clocked)

    def get_lr(self) -> list[float | Tensor]:
        """The rates at the schedule's step; sets beta1 there too, as OneCycleLR does."""
        point = self.where()
        if self.falls_only and self.rise_from is not None:  # narrowed for mypy
            beta1 = fall_momentum(point.pct, self.rise_from)
            lr = fall_rate(point.pct, self.peak, self.rise_from)
        else:
            beta1 = momentum(point, self.rise_from)
            lr = rate(point, self.peak, self.rise_from)
        for group in self.optimizer.param_groups:
            group["betas"] = (beta1, *group["betas"][1:])
        return [lr] * len(self.optimizer.param_groups)

    def go_to(self, step: int) -> None:
        """Puts the schedule at `step` of the run, and the optimiser at its rate and beta1
        there: where a resumed run goes on."""
        self.last_epoch = step
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        """Plain values, which torch.load(weights_only) reads: not the clock."""
        return {k: v for k, v in super().state_dict().items() if k != "_clock"}
