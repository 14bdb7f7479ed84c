"""Config fields that carry their own documentation, for every stage's config dataclass.

`setting(default, help=..., group=...)` is a `dataclasses.field` whose
metadata the command line reads (actionstream/command.py): the help text, the
`--help` section, and whether it is a positional argument. No click here, so
configs stay importable by code that has no command line.
"""

from __future__ import annotations

import dataclasses
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
