"""The two extension points: `Judge` (AI feedback on one candidate) and `Metric` (a hallucination score
over many responses). Both are small Protocols; a user plugs in their own by dotted path
(`my_pkg.my_judge.MyJudge`), built-ins sit in one dict next to their CLI.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Judge(Protocol):
    """Scores candidate responses against what is known about the prompt (caption, objects, image).

    `judge` gets candidate records (`id`, `prompt_id`, `text`, ...) and the prompt records they answer
    (keyed by prompt id) and returns one judgment per candidate, in order, with at least
    `candidate_id`, `judge`, `score` (higher = more faithful; None when the judgment failed),
    `hallucinated` (list of strings) and `rationale`.
    """

    name: str

    def judge(self, candidates: list[dict], prompts: dict[str, dict]) -> list[dict]: ...


@runtime_checkable
class Metric(Protocol):
    """Scores responses for one benchmark and returns a report dict (`metrics`, `n`, `per_item`)."""

    name: str

    def score(self, responses: list[dict], references: dict[str, dict]) -> dict: ...


def load_object(spec: str, builtins: dict[str, Any]) -> Any:
    """Resolve a built-in name or a dotted path `package.module.Name`; errors name the spec."""
    if spec in builtins:
        return builtins[spec]
    if "." not in spec:
        raise ValueError(f"unknown name {spec!r}; built-ins are {sorted(builtins)} or give a dotted path "
                         f"such as my_pkg.my_module.MyClass")
    module_name, _, attr = spec.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import {module_name!r} for {spec!r}: {err}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{module_name!r} has no attribute {attr!r} (from {spec!r})") from None


def match_references(responses: list[dict], references: dict[str, dict]) -> tuple[list[tuple[dict, dict]], list]:
    """(response, reference) pairs joined on the response's `id`, and the ids that have no reference
    (a Metric lists those as `missing_ids` rather than scoring them against nothing)."""
    matched, missing = [], []
    for resp in responses:
        ref = references.get(resp["id"])
        if ref is None:
            missing.append(resp["id"])
        else:
            matched.append((resp, ref))
    return matched, missing
