"""Command-line flags from a config dataclass, so each stage has one typed config.

Every field becomes `--field-name`, with its help text taken from the field's
`metadata["help"]`. With an env prefix, `ACTIONSTREAM_FIELD_NAME` supplies the
default, and a flag on the command line overrides it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

_SCALARS: tuple[type, ...] = (int, float, str)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, whether None is allowed) for `X` or `X | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _converter(tp: Any, field_name: str) -> Any:
    base, optional = _base_type(tp)
    if base is bool:
        conv: Any = _parse_bool
    elif base in _SCALARS:
        conv = base
    elif typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]

        def conv(text: str) -> tuple[Any, ...]:
            return tuple(item(p) for p in text.replace(",", " ").split())

    else:
        raise TypeError(f"field {field_name}: unsupported type {tp!r}")
    if not optional:
        return conv

    def maybe(text: str) -> Any:
        return None if text.strip().lower() in ("", "none") else conv(text)

    return maybe


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str = "") -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        conv = _converter(hints[f.name], f.name)
        help_text = f.metadata.get("help", "")
        default: Any = f.default
        factory: Any = f.default_factory
        if default is dataclasses.MISSING and factory is not dataclasses.MISSING:
            default = factory()
        env_name = (env_prefix + f.name).upper() if env_prefix else ""
        if env_name:
            help_text = f"{help_text} [env {env_name}]".strip()
            if env_name in os.environ:
                try:
                    default = conv(os.environ[env_name])
                except (ValueError, argparse.ArgumentTypeError) as e:
                    parser.error(f"{env_name}={os.environ[env_name]!r}: {e}")
        required = default is dataclasses.MISSING
        parser.add_argument(
            flag,
            dest=f.name,
            type=conv,
            required=required,
            default=None if required else default,
            help=f"{help_text} (default: {default})" if not required else help_text,
            metavar=f.name.upper(),
        )


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """The config from parsed flags; a value the config refuses ends the program with its reason."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in vars(args).items() if k in names})
    except ValueError as e:
        raise SystemExit(f"actionstream: {e}") from None
