"""Built-in judges by name; anything else is a dotted path (`my_pkg.my_judge.MyJudge`)."""

from __future__ import annotations

import inspect
from typing import Any

from halign.rewards.base import Judge, load_object

JUDGES: dict[str, str] = {
    "caption": "halign.rewards.judges.caption.CaptionJudge",
    "grounding": "halign.rewards.judges.grounding.GroundingJudge",
    "claims": "halign.rewards.judges.claims.ClaimsJudge",
    "ensemble": "halign.rewards.judges.ensemble.EnsembleJudge",
}


def judge_class(name_or_dotted_path: str) -> type:
    spec = load_object(name_or_dotted_path, JUDGES)
    # Built-ins are stored as dotted paths so that importing the registry imports no judge module.
    return load_object(spec, {}) if isinstance(spec, str) else spec


def accepted_options(cls: type) -> set[str] | None:
    """Keyword options the judge's constructor takes; None when it takes **kwargs (anything goes)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def build_judge(name_or_dotted_path: str, **options: Any) -> Judge:
    """Instantiate a judge; an option the judge does not take is an error that names it."""
    cls = judge_class(name_or_dotted_path)
    accepted = accepted_options(cls)
    if accepted is not None:
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise ValueError(f"judge {name_or_dotted_path!r} does not take option(s) {unknown}; "
                             f"it takes {sorted(accepted)}")
    judge = cls(**options)
    if not isinstance(judge, Judge):
        raise ValueError(f"{name_or_dotted_path!r} is not a Judge: it needs a `name` and a "
                         f"`judge(candidates, prompts)` method")
    return judge
