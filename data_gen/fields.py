"""Typed config sections: dataclasses whose fields carry their help in `metadata` (as trl's DPOConfig does),
and the two things derived from them, so that a key is described once:

  - `from_mapping(where, cls, values)`: a recipe section checked against the dataclass before any model
    loads (unknown keys, value types, the class's own `__post_init__` checks), every error naming the key;
  - `add_flags(parser, cls, names)`: command-line flags, with the field's type, default and help.

It lives in data_gen/, the lowest layer, and imports no other halign module, because every layer's configs
use it: `SampleConfig` and `PairsConfig` here, `TrainConfig` in align/, the recipe sections in recipes/.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def field(default=dataclasses.MISSING, *, help: str, default_factory=dataclasses.MISSING, **metadata):
    """A dataclass field with its help text (and any other metadata, e.g. `flag` for its CLI name)."""
    kwargs = {"default": default} if default_factory is dataclasses.MISSING else {"default_factory": default_factory}
    return dataclasses.field(metadata={"help": help, **metadata}, **kwargs)


def help_of(cls, name: str) -> str:
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def _allowed(hint) -> tuple[type, ...]:
    """The plain types a field's annotation admits (None included for `X | None`)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    if hint is type(None):
        return (type(None),)
    if origin is typing.Literal:
        return tuple({type(v) for v in typing.get_args(hint)})
    if origin is not None:  # list[str], dict[str, Any]: the container only
        return (origin,)
    return (hint,) if isinstance(hint, type) else (object,)


def _type_ok(value: Any, allowed: tuple[type, ...]) -> bool:
    if object in allowed:
        return True
    if isinstance(value, bool):  # a bool is an int to Python, never to a config
        return bool in allowed
    if isinstance(value, int) and float in allowed:
        return True
    return isinstance(value, allowed)


def _names(allowed: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in allowed)


def from_mapping(where: str, cls, values: dict, **fixed):
    """cls(**fixed, **values) after checking every key of `values`; errors read `where.key ...`."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in fixed]
    extra = sorted(set(values) - set(known))
    if extra:
        raise ValueError(f"unknown key {where}.{extra[0]}" + (f" (and {extra[1:]})" if extra[1:] else "")
                         + f"; known keys: {sorted(known)}")
    for name, value in values.items():
        allowed = _allowed(hints[name])
        if not _type_ok(value, allowed):
            raise ValueError(f"{where}.{name} must be {_names(allowed)}, got {value!r} ({help_of(cls, name)})")
    try:
        return cls(**fixed, **values)
    except (ValueError, TypeError) as err:  # __post_init__ checks: impossible values and combinations
        first = str(err).split(" ", 1)[0]
        # "n must be ..." from the class reads "source.n must be ..."; other messages keep their own words.
        raise ValueError(f"{where}.{err}" if first in known else f"{where}: {err}") from None


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, names: list[str],
              defaults: dict | None = None) -> None:
    """--flag-name for each field named: its type and default from the dataclass (or `defaults`), its help
    from the field's metadata. A bool field that defaults to true gets `--no-<name>`, one that defaults to
    false `--<name>`; a field's metadata may name its flag (`flag`) and its allowed values (`choices`).
    A field without a default is a required flag, unless `defaults` gives it one (e.g. None, when another
    flag can stand in for it)."""
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    for name in names:
        f = by_name[name]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
            and name not in (defaults or {})
        default = (defaults or {}).get(name, f.default if f.default is not dataclasses.MISSING else None)
        allowed = [t for t in _allowed(hints[name]) if t is not type(None)]
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        if allowed == [bool]:
            flag = f.metadata.get("flag") or ("--no-" if default else "--") + name.replace("_", "-")
            text = f.metadata.get("help", "")
            parser.add_argument(flag, dest=name, action="store_false" if default else "store_true",
                                help=f"turn off (on by default): {text}" if default else text)
            continue
        kind = allowed[0] if len(allowed) == 1 and allowed[0] in (int, float, str) else str
        # A flag named apart from its field (--out for output_dir) shows its own name as the value's.
        metavar = flag[2:].replace("-", "_").upper() if f.metadata.get("flag") else None
        parser.add_argument(flag, dest=name, type=kind, default=default, required=required, metavar=metavar,
                            choices=f.metadata.get("choices"), help=f.metadata.get("help"))
