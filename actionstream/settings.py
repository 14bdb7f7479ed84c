"""Config fields that carry their own documentation, for every stage's config dataclass.

`setting(default, help=..., group=...)` is a `dataclasses.field` whose
metadata the command line reads (actionstream/command.py): the help text, the
`--help` section, and whether it is a positional argument; and whether it names
a file or folder, which `resolved` makes absolute in the config a stage saves.
No click here, so configs stay importable by code that has no command line.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

HELP, GROUP, POSITIONAL, PATH, NOT_PATHS = "help", "group", "positional", "path", "not_paths"
AT_LEAST, AT_MOST = "at_least", "at_most"
DEFAULT_GROUP = "Options"


def setting(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    group: str = DEFAULT_GROUP,
    positional: bool = False,
    path: bool = False,
    not_paths: tuple[str, ...] = (),
    at_least: float | None = None,
    at_most: float | None = None,
) -> Any:
    """A dataclass field with its help text and `--help` section; no default: required.

    `path`: its value is a file or folder (but for the names in `not_paths`, such as
    `--init`'s choices), made absolute where the config is saved (`resolved`).
    `at_least`, `at_most`: the bounds `refuse_out_of_range` holds it to, where the
    plain words "must be at least" and "at most" say enough."""
    metadata = {HELP: help, GROUP: group, POSITIONAL: positional, PATH: path}
    metadata |= {NOT_PATHS: not_paths, AT_LEAST: at_least, AT_MOST: at_most}
    return dataclasses.field(default=default, metadata=metadata)


def resolved(config: DataclassInstance, **given: Any) -> dict[str, Any]:
    """`config` as a stage saves it beside what it writes, `given` settings in place of its
    own: as JSON holds it (tuples as lists), and its paths absolute, so that it says what
    produced the files wherever they are read, and the run can be repeated from anywhere."""
    return absolute(type(config), json.loads(json.dumps(dataclasses.asdict(config) | given)))


def absolute(config_type: type[DataclassInstance], settings: dict[str, Any]) -> dict[str, Any]:
    """`settings` (a `config_type` as saved) with the values of its path settings made
    absolute, from here: two spellings of one folder then compare equal. A path left
    empty (none given) is kept as it is."""
    paths = {
        f.name: f.metadata[NOT_PATHS]
        for f in dataclasses.fields(config_type)
        if f.metadata.get(PATH)
    }
    return settings | {
        k: str(Path(settings[k]).resolve())
        for k, names in paths.items()
        if settings.get(k) and settings[k] not in names
    }


def refuse_empty_paths(config: DataclassInstance) -> None:
    """Raises ValueError for a path setting of `config` given as an empty string: read as
    a path it is the current folder (`--out ""` wrote a run there, `--cache ""` scattered
    its files there), and an optional one would quietly mean "not set" (`--data ""`
    trained on the synthetic world). Leaving the option out keeps its default."""
    for f in dataclasses.fields(config):
        if f.metadata.get(PATH) and getattr(config, f.name) == "":
            raise ValueError(
                f"{f.name} must name a file or folder, got an empty value; leave the option "
                "out for its default"
            )


def refuse_non_finite(config: DataclassInstance) -> None:
    """Raises ValueError for a float setting of `config` that is NaN or infinite: NaN
    passes every `<` check a config makes (an idle timeout of NaN turned the timeout
    off), and no setting here means anything at infinity."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")


def refuse_out_of_range(config: DataclassInstance) -> None:
    """Raises ValueError for a setting of `config` outside the bounds its field declares
    (`setting(at_least=, at_most=)`); an optional setting left unset (None) has none."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        least, most = f.metadata.get(AT_LEAST), f.metadata.get(AT_MOST)
        if least is not None and value < least:
            bound = "must not be negative" if least == 0 else f"must be at least {least}"
            raise ValueError(f"{f.name} {bound}, got {value}")
        if most is not None and value > most:
            raise ValueError(f"{f.name} must be at most {most}, got {value}")
