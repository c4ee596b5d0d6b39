"""`key=value` settings from a command line, read one way everywhere: `halign run` overrides
(`section.key=value`), `halign train` (`dpo.KEY=VALUE`, `peft.KEY=VALUE`, `mdpo.KEY=VALUE`),
`halign rlaif --gate KEY=VALUE` and `--judge-option KEY=VALUE` (`halign judge`, `halign gen-pairs`).
Values are YAML (`1e-4`, `true`, `null`, `[sigmoid,sft]`, `{type: jsonl}`); a JSON value reads the same.
"""

from __future__ import annotations

import copy
import re

import yaml


def parse_value(text: str):
    """A YAML value; `1e-4` is a number (YAML 1.1 alone reads an exponent without a dot as text)."""
    value = yaml.safe_load(text) if text.strip() else None
    if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
        return float(value)
    return value


def parse_override(item: str, what: str = "override") -> tuple[list[str], object]:
    """`a.b.c=value` -> (["a", "b", "c"], value); errors name the item."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"{what} {item!r} must look like key=value (section.key=value for a nested key)")
    try:
        return key.split("."), parse_value(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {item!r}: the value is not valid YAML ({err})") from None


def parse_option(item: str, what: str = "--judge-option") -> tuple[str, object]:
    """`key=value` with a flat key, a constructor keyword (`-` reads as `_`, as in flags): (key, value)."""
    parts, value = parse_override(item, what)
    if len(parts) != 1:
        raise ValueError(f"{what} {item!r} must look like key=value with a plain key, got {'.'.join(parts)!r}")
    return parts[0].replace("-", "_"), value


def apply_overrides(raw: dict, overrides: list[str], what: str = "override") -> dict:
    """A copy of `raw` with each `a.b.c=value` set. A mapping value replaces the whole section, so a source
    type can change."""
    cfg = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item, what)
        node = cfg
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"{what} {item!r}: {'.'.join(parts[:i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return cfg
