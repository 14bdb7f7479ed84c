"""Config fields that carry their own documentation, for every stage's config dataclass.

`setting(default, help=..., group=...)` is a `dataclasses.field` whose
metadata the command line reads (actionstream/command.py): the help text, the
`--help` section, and whether it is a positional argument. No click here, so
configs stay importable by code that has no command line.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

HELP, GROUP, POSITIONAL = "help", "group", "positional"
DEFAULT_GROUP = "Options"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str = DEFAULT_GROUP,
    positional: bool = False,
) -> Any:
    """A dataclass field with its help text and `--help` section; no default: required."""
    return dataclasses.field(
        default=default, metadata={HELP: help, GROUP: group, POSITIONAL: positional}
    )


def refuse_non_finite(config: Any) -> None:
    """Raises ValueError for a float setting of `config` that is NaN or infinite: NaN
    passes every `<` check a config makes (an idle timeout of NaN turned the timeout
    off), and no setting here means anything at infinity."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
