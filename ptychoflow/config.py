"""Configuration: defaults < TOML file < command-line flags.

Every subcommand describes its settings as one dataclass. The same dataclass
generates the command-line flags (``--frame-rate`` for ``frame_rate``) and names
the keys of its TOML section, so a key that exists in the file can always be
overridden by a flag and nothing user-settable hides in the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_CONFIG = "ptychoflow.toml"

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the fix."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> Any:
    """Strip ``Optional[...]`` / ``X | None`` so argparse gets the concrete type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per field of the settings dataclass ``cls``.

    Flags default to ``None`` so that :func:`resolve` can tell "not given" from
    "given the default", which is what lets the TOML file sit in between.
    """
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[field.name])
        helptext = field.metadata.get("help", "")
        default = (
            field.default
            if field.default is not dataclasses.MISSING
            else field.default_factory()  # type: ignore[misc]
            if field.default_factory is not dataclasses.MISSING
            else None
        )
        helptext = f"{helptext} (default: {default!r})" if helptext else f"default: {default!r}"
        flags = [_flag(field.name), *field.metadata.get("aliases", ())]
        if tp is bool:
            parser.add_argument(
                *flags, dest=field.name, default=None,
                action=argparse.BooleanOptionalAction, help=helptext,
            )
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            parser.add_argument(
                *flags, dest=field.name, default=None, type=item, nargs="+", help=helptext
            )
        else:
            choices = field.metadata.get("choices")
            parser.add_argument(
                *flags, dest=field.name, default=None, type=tp, choices=choices, help=helptext
            )


def load_file(path: str | Path | None) -> dict[str, Any]:
    """Read the TOML configuration; a missing default file is simply empty."""
    explicit = path is not None
    p = Path(path if path is not None else DEFAULT_CONFIG)
    if not p.exists():
        if explicit:
            raise ConfigError(f"configuration file {p} does not exist; check --config")
        return {}
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {p} is not valid TOML: {exc}") from exc


def resolve(cls: type[T], section: str, args: argparse.Namespace | None = None,
            file_data: dict[str, Any] | None = None) -> T:
    """Build the settings ``cls`` from defaults, the file's ``[section]`` and flags."""
    if file_data is None:
        file_data = load_file(getattr(args, "config", None))
    table = file_data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] in the configuration must be a table")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(table) - names
    if unknown:
        raise ConfigError(
            f"unknown key(s) {sorted(unknown)} in [{section}] of the configuration; "
            f"known keys: {sorted(names)}"
        )
    values: dict[str, Any] = dict(table)
    if args is not None:
        for name in names:
            v = getattr(args, name, None)
            if v is not None:
                values[name] = v
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{section}] settings: {exc}") from exc


def setting(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field with the help text its flag shows."""
    metadata = {"help": help, **meta}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)
