"""A click command from a config dataclass, so each stage's one typed config is its flags.

Every field becomes `--field-name` (a `bool` becomes `--name/--no-name`), or
a positional argument when its metadata says `positional`. The field's
metadata gives the help text (`help`) and the section of `--help` it is
listed under (`group`). With an environment prefix, `PREFIX_FIELD_NAME`
supplies a value too, and a flag on the command line overrides it. Parsing,
conversion, env lookup and messages are click's; the dataclass's own
`__post_init__` then checks the values together, and any refusal ends the
program with one line.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import click

from actionstream.settings import DEFAULT_GROUP, GROUP, HELP, PATH, POSITIONAL

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class IntTuple(click.ParamType):
    """`16,32,64` (or space-separated) -> (16, 32, 64)."""

    name = "INTS"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        parts = re.split(r"\s*,\s*|\s+", str(value).strip())
        if len(parts) > 1 and "" in parts:
            # `8,,16` read as 8,16 would build a network other than the one meant.
            self.fail(f"{value!r} has an empty item; give each number once: 8,16,32", param, ctx)
        try:
            items = tuple(int(p) for p in parts if p)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of whole numbers", param, ctx)
        if not items:
            self.fail("needs at least one number", param, ctx)
        return items


class ConfigOption(click.Option):
    """An option that knows the `--help` section (its config group) it is listed under."""

    def __init__(self, *args: Any, group: str = DEFAULT_GROUP, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def get_error_hint(self, ctx: click.Context | None) -> str:
        """The flag a bad value came from, and its environment variable only when it came
        from there: click names both, so `--max-streams abc` read as if the variable held
        it."""
        hint = click.Parameter.get_error_hint(self, ctx)
        if ctx is None or self.name is None:
            return hint
        came_from = ctx.get_parameter_source(self.name)
        if came_from is click.core.ParameterSource.ENVIRONMENT and isinstance(self.envvar, str):
            hint += f" (from {self.envvar})"
        return hint


class ConfigCommand(click.Command):
    """A command whose `--help` lists options in their config groups, in field order."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                group = param.group if isinstance(param, ConfigOption) else "Other"
                sections.setdefault(group, []).append(record)
        # The config's groups in field order; help and positional arguments last.
        for group in sorted(sections, key=lambda g: g == "Other"):
            with formatter.section(group):
                formatter.write_dl(sections[group])


C = typing.TypeVar("C", bound="DataclassInstance")


def config_command(
    name: str,
    config: type[C],
    run: Callable[[C], int],
    help: str,
    env_prefix: str | None = None,
    env_fields: Collection[str] | None = None,
) -> click.Command:
    """The command `name`: parses `config`'s fields, builds the config, calls `run` with it.

    With `env_prefix`, the fields named in `env_fields` (all when None) also
    read `env_prefix + FIELD_NAME`.
    """
    hints = typing.get_type_hints(config)
    fields = dataclasses.fields(config)
    params: list[click.Parameter] = []
    for f in fields:
        env = None
        if env_prefix is not None and (env_fields is None or f.name in env_fields):
            env = (env_prefix + f.name).upper()
        params.append(_parameter(f, hints[f.name], env))

    def callback(**values: Any) -> int:
        try:
            cfg = config(**values)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        try:
            return run(cfg)
        except click.ClickException as e:
            # A refusal from inside the stage: say which command refused.
            path = click.get_current_context().command_path
            raise click.ClickException(f"{path}: {e.format_message()}") from None

    return ConfigCommand(
        name,
        params=params,
        callback=callback,
        help=help,
        short_help=help.split("\n")[0],
        context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
    )


def _parameter(f: dataclasses.Field[Any], hint: Any, env: str | None) -> click.Parameter:
    base, optional = _unwrap_optional(hint)
    default = f.default
    required = default is dataclasses.MISSING
    help_text = f.metadata.get(HELP, "")
    click_type = _click_type(base, f.name)
    # An empty path is refused by its config (refuse_empty_paths), not taken as unset.
    callback = _empty_is_none if optional and not f.metadata.get(PATH) else None
    # Click tells "no value" from an explicit None default only when none is passed.
    defaults: dict[str, Any] = {} if required else {"default": default}
    if f.metadata.get(POSITIONAL, False):
        return click.Argument(
            [f.name], type=click_type, required=required, callback=callback, **defaults
        )
    flag = "--" + f.name.replace("_", "-")
    decls = [f"{flag}/--no-{flag[2:]}"] if base is bool else [flag]
    return ConfigOption(
        [*decls, f.name],
        type=None if base is bool else click_type,
        required=required,
        **defaults,
        help=help_text,
        envvar=env,
        show_envvar=env is not None,
        callback=callback,
        group=f.metadata.get(GROUP, DEFAULT_GROUP),
    )


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(underlying type, whether None is allowed) for `X` or `X | None`."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args: Sequence[Any] = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _click_type(base: Any, name: str) -> click.ParamType:
    if base is bool:
        return click.BOOL
    if base is int:
        return click.INT
    if base is float:
        return click.FLOAT
    if base is str:
        return click.STRING
    if typing.get_origin(base) is tuple and typing.get_args(base)[0] is int:
        return IntTuple()
    if typing.get_origin(base) is typing.Literal:  # a closed set of words, in any case
        return click.Choice(typing.get_args(base), case_sensitive=False)
    raise TypeError(f"config field {name}: no command-line type for {base!r}")


def _empty_is_none(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    # An optional setting can be cleared from the environment: VAR= means "not set".
    return None if value == "" else value
