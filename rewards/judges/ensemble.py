"""`ensemble` judge: several judges on the same candidates, combined, with how much they agree.

Modes (per candidate, over the member judgments; a candidate that any member failed on fails, naming it):
  mean   mean of the members' scores after z-scoring each member over the run, so a 0-10 LLM score and a
         claim count weigh the same (normalize="none" averages the raw scores)
  vote   score = number of members that find no hallucination; flagged when a majority finds one
  all    all must pass: score 1 when no member finds a hallucination, else 0

Agreement between every two members (candidates both judged) lands in `manifest_info()["agreement"]`, hence
in manifest.json: Spearman's rank correlation of the scores, Cohen's kappa and raw agreement on "hallucinated
yes/no" (a non-empty `hallucinated` list), and how often they order two answers to the same prompt the same
way by number of distinct hallucinations. Both statistics are implemented here (a few lines each, checked by
hand in the tests) rather than pulled from scipy, which is only a dev dependency.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from halign.rewards.judges.caption import failed_judgment
from halign.rewards.judges.llm_client import UsageStats

MODES = ("mean", "vote", "all")


# ---------------------------------------------------------------------------------------------- statistics

def average_ranks(values: list[float]) -> list[float]:
    """1-based ranks; tied values share the mean of the ranks they span (as Spearman's rho needs)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: list[float], y: list[float]) -> float | None:
    n = len(x)
    if n < 2:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None  # a constant judge has no ranking to correlate
    return sxy / math.sqrt(sxx * syy)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rho: the Pearson correlation of average ranks (None when undefined)."""
    return pearson(average_ranks(x), average_ranks(y))


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two binary raters: (p_o - p_e) / (1 - p_e); None when p_e = 1 (undefined)."""
    n = len(a)
    if n == 0:
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    p_e = pa * pb + (1 - pa) * (1 - pb)
    if p_e == 1:
        return None
    return (p_o - p_e) / (1 - p_e)


def order_agreement(counts_a: list[int], counts_b: list[int], groups: list[Any]) -> dict:
    """Over pairs of candidates in the same group (prompt): do two judges agree on which hallucinates more?

    `decided_by_a`: pairs that judge A orders strictly; `agree_on_a`: the share of those that B orders the same
    way (a B tie counts as disagreement); `agree_both_decided`: the same share over pairs both order strictly.
    """
    by_group: dict[Any, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    decided_a = same_a = both = same_both = 0
    for members in by_group.values():
        for i, j in itertools.combinations(members, 2):
            da = (counts_a[i] > counts_a[j]) - (counts_a[i] < counts_a[j])
            db = (counts_b[i] > counts_b[j]) - (counts_b[i] < counts_b[j])
            if da:
                decided_a += 1
                same_a += da == db
            if da and db:
                both += 1
                same_both += da == db
    return {"decided_by_a": decided_a, "agree_on_a": same_a / decided_a if decided_a else None,
            "both_decided": both, "agree_both_decided": same_both / both if both else None}


def hallucination_count(judgment: dict) -> int:
    return len(set(judgment.get("hallucinated") or []))


def agreement(labels: list[str], judgments: list[list[dict]]) -> dict:
    """Agreement statistics for every two members; judgments[m][i] is member m's verdict on candidate i."""
    out = {}
    for (la, ja), (lb, jb) in itertools.combinations(zip(labels, judgments), 2):
        both = [(a, b) for a, b in zip(ja, jb) if a.get("score") is not None and b.get("score") is not None]
        flags_a = [bool(a.get("hallucinated")) for a, _ in both]
        flags_b = [bool(b.get("hallucinated")) for _, b in both]
        kappa, rho = cohen_kappa(flags_a, flags_b), spearman([a["score"] for a, _ in both],
                                                             [b["score"] for _, b in both])
        out[f"{la} vs {lb}"] = {
            "n": len(both), "spearman": _round(rho), "kappa": _round(kappa),
            "flag_agreement": _round(sum(x == y for x, y in zip(flags_a, flags_b)) / len(both)) if both else None,
            "order": {k: _round(v) for k, v in order_agreement(
                [hallucination_count(a) for a, _ in both], [hallucination_count(b) for _, b in both],
                [a.get("prompt_id") for a, _ in both]).items()},
        }
    return out


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


# ---------------------------------------------------------------------------------------------- judge

class EnsembleJudge:
    name = "ensemble"

    def __init__(self, judges: list | None = None, mode: str = "mean", normalize: str = "zscore",
                 cache_dir: str | Path | None = None, progress: bool = True, base_url: str | None = None,
                 model: str | None = None, api_key_env: str | None = None):
        """`judges`: built-in names / dotted paths, dicts {"judge": name, **options}, or Judge instances.

        `base_url`, `model` and `api_key_env` (the CLI's --base-url/--model/--api-key-env) are defaults for
        the members that talk to an LLM; a member's own setting wins."""
        defaults = {k: v for k, v in (("base_url", base_url), ("model", model), ("api_key_env", api_key_env))
                    if v is not None}
        from halign.rewards.judges.registry import accepted_options, build_judge, judge_class

        if mode not in MODES:
            raise ValueError(f"ensemble judge: mode must be one of {MODES}, got {mode!r}")
        if normalize not in ("zscore", "none"):
            raise ValueError(f"ensemble judge: normalize must be 'zscore' or 'none', got {normalize!r}")
        if not isinstance(judges, list) or len(judges) < 2:
            raise ValueError("ensemble judge: give at least two member judges: judges=[...] in Python, "
                             "--judge-option judges='[\"grounding\", ...]' with halign gen-pairs")
        self.mode, self.normalize = mode, normalize
        self.members, self.labels = [], []
        for i, spec in enumerate(judges):
            if isinstance(spec, (str, dict)):
                options = dict(spec) if isinstance(spec, dict) else {"judge": spec}
                name = options.pop("judge", None) or options.pop("name", None)
                if not name:
                    raise ValueError(f"ensemble judge: member {i} {spec!r} names no judge (key 'judge')")
                accepted = accepted_options(judge_class(name))
                # Each member that can cache gets its own folder; each that shows progress follows ours.
                if cache_dir and "cache_dir" not in options and (accepted is None or "cache_dir" in accepted):
                    options["cache_dir"] = str(Path(cache_dir) / f"{i}-{name.rsplit('.', 1)[-1]}")
                if not progress and (accepted is None or "progress" in accepted):
                    options.setdefault("progress", False)
                for key, value in defaults.items():
                    if accepted is None or key in accepted:
                        options.setdefault(key, value)
                spec = build_judge(name, **options)
            label = getattr(spec, "name", f"judge{i}")
            self.labels.append(label if label not in self.labels else f"{label}#{i}")
            self.members.append(spec)
        self.agreement: dict | None = None

    @property
    def stats(self) -> UsageStats | None:
        """The members' LLM usage summed (None when no member calls an LLM)."""
        parts = [s for s in (getattr(m, "stats", None) for m in self.members) if isinstance(s, UsageStats)]
        if not parts:
            return None
        total = UsageStats()
        for s in parts:
            for key in ("items", "cache_hits", "failures", "calls", "retries", "reasks", "prompt_tokens",
                        "completion_tokens", "wall_seconds"):
                setattr(total, key, getattr(total, key) + getattr(s, key))
            total.cost_usd = None if total.cost_usd is None or s.cost_usd is None else total.cost_usd + s.cost_usd
        return total

    def manifest_info(self) -> dict:
        members = []
        for label, member in zip(self.labels, self.members):
            describe = getattr(member, "manifest_info", None) or getattr(member, "config", None)
            members.append({"label": label, **(describe() if callable(describe) else {})})
        return {"judge": self.name, "mode": self.mode, "normalize": self.normalize, "members": members,
                "agreement": self.agreement}

    def judge(self, candidates: list[dict], prompts: dict[str, dict]) -> list[dict]:
        per_member = [m.judge(candidates, prompts) for m in self.members]
        self.agreement = agreement(self.labels, per_member)
        scales = [self._scale(js) for js in per_member]
        out = []
        for i, cand in enumerate(candidates):
            verdicts = [js[i] for js in per_member]
            failed = [f"{label}: {v.get('error') or 'no score'}" for label, v in zip(self.labels, verdicts)
                      if v.get("score") is None]
            if failed:
                out.append(failed_judgment(cand, self.name, "; ".join(failed)))
                continue
            flags = [bool(v.get("hallucinated")) for v in verdicts]
            if self.mode == "mean":
                # + 0.0 turns a -0.0 into 0.0 (a z-score sum can come out as -0.0)
                score = sum((v["score"] - mu) / sd for v, (mu, sd) in zip(verdicts, scales)) / len(verdicts) + 0.0
                flagged = sum(flags) * 2 > len(flags)
            elif self.mode == "vote":
                score, flagged = float(flags.count(False)), sum(flags) * 2 > len(flags)
            else:
                flagged = any(flags)
                score = 0.0 if flagged else 1.0
            rec = {"candidate_id": cand.get("id"), "prompt_id": cand.get("prompt_id"), "judge": self.name,
                   "score": score, "claims": [],
                   "hallucinated": list(dict.fromkeys(h for v in verdicts for h in v.get("hallucinated") or []))
                   if flagged else [],
                   "rationale": "; ".join(f"{lab}: {v.get('score'):g}" for lab, v in zip(self.labels, verdicts)),
                   "members": {lab: {"score": v["score"], "hallucinated": v.get("hallucinated") or []}
                               for lab, v in zip(self.labels, verdicts)},
                   "usage": {k: sum((v.get("usage") or {}).get(k, 0) for v in verdicts)
                             for k in ("prompt_tokens", "completion_tokens")},
                   "cached": all(v.get("cached") for v in verdicts), "error": None}
            # The pair builder's coverage filter reads `covered`: take the first member that reports it.
            covered = next((v["covered"] for v in verdicts if "covered" in v), None)
            if covered is not None:
                rec["covered"] = covered
            out.append(rec)
        return out

    def _scale(self, judgments: list[dict]) -> tuple[float, float]:
        """(mean, sd) used to z-score one member; (0, 1) leaves scores as they are."""
        scores = [j["score"] for j in judgments if j.get("score") is not None]
        if self.normalize == "none" or len(scores) < 2:
            return 0.0, 1.0
        mu = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mu) ** 2 for s in scores) / len(scores))
        return (mu, sd) if sd > 0 else (mu, 1.0)
