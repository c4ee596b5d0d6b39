"""Judge options given on the command line (`--judge-option key=value`), shared by `halign judge` and
`halign gen-pairs` so that both read them the same way."""

from __future__ import annotations

import json


def parse_option(text: str) -> tuple[str, object]:
    """key=value; the value is read as JSON when it parses (numbers, true, lists), else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--judge-option must look like key=value, got {text!r}")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value
