"""The one error training raises for a run that cannot go on as configured."""

from __future__ import annotations


class TrainingError(Exception):
    """Training cannot start as configured; the message says why."""
