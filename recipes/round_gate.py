"""Keep the best RLAIF round, not the last: every round scored on a validation split, one declared rule.

Iterative RLAIF does not improve monotonically: a round can overshoot (the model stops mentioning real
objects) or trade one hallucination for another (fewer invented objects in captions, more "yes" to absent
objects in yes/no questions). RLAIF-V, trl and ms-swift keep the last checkpoint; halign scores the policy
before alignment (round 0) and after every round on a **validation** split and keeps the round the rule
prefers. The validation scenes are disjoint from the test scenes the final report uses, and from every
scene a judge or the SFT ever saw, so choosing on them does not bias the final numbers.

The rule (`GateRule`): among the rounds whose recall and POPE accuracy stay within tolerance of round 0's,
the one with the lowest `metric` (CHAIR_i by default); ties go to higher recall, then the earlier round.
Round 0 is always eligible: when no round passes, the gate keeps the starting model and says so.

"Within tolerance" is a non-inferiority test, not a point comparison: the validation split is a sample, and
a round whose observed POPE drop is 0.9 points against a 1-point tolerance is about as likely to lose more
than a point on new scenes as less. Both scores are measured on the same validation items for every round,
so the change against round 0 has a paired standard error (`paired_change_se`, from the per-item results);
a round passes when the one-sided lower confidence bound of its change (`confidence`, 95% by default) stays
within tolerance. `confidence=0.5` compares point estimates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist


CAPTION_KEYS = ("chair_s", "chair_i", "recall", "mean_len", "n")
POPE_KEYS = ("accuracy", "f1", "yes_ratio")


@dataclass(frozen=True)
class GateRule:
    metric: str = field(default="chair_i", metadata={"help": "minimised on validation: chair_i or chair_s"})
    recall_tolerance: float = field(default=0.03, metadata={
        "help": "a round may lose at most this much validation recall against round 0 ..."})
    pope_tolerance: float = field(default=0.01, metadata={
        "help": "... and at most this much POPE accuracy (toy clips: the clip questions' accuracy)"})
    confidence: float = field(default=0.95, metadata={
        "help": "one-sided confidence that a round's paired change against round 0 stays within tolerance "
                "(0.5: point estimates)"})
    val_scenes: int = field(default=200, metadata={"help": "toy world: size of the validation split"})

    def __post_init__(self):
        if self.metric not in ("chair_i", "chair_s"):
            raise ValueError(f"gate metric must be 'chair_i' or 'chair_s', got {self.metric!r}")
        if self.recall_tolerance < 0 or self.pope_tolerance < 0:
            raise ValueError("gate tolerances must be >= 0")
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"gate confidence must lie in [0.5, 1), got {self.confidence}")
        if self.val_scenes < 1:
            raise ValueError("gate val_scenes must be >= 1")

    def z(self) -> float:
        return NormalDist().inv_cdf(self.confidence)

    def describe(self) -> str:
        bound = ("" if self.confidence == 0.5 else
                 f", each change's one-sided {self.confidence:.0%} lower confidence bound (paired over the items)")
        return (f"lowest validation {self.metric} among rounds whose recall is at most {self.recall_tolerance:.2f} "
                f"and POPE (toy clips: clip-question) accuracy at most {self.pope_tolerance:.2f} below round 0's"
                f"{bound} (ties: higher recall, then the earlier round)")


# (score, its label in reasons, which tolerance); toy clips' questions hold the place of POPE.
GUARDED = (("recall", "recall", "recall_tolerance"), ("pope_accuracy", "POPE accuracy", "pope_tolerance"),
           ("qa_accuracy", "clip-question accuracy", "pope_tolerance"))


def eligibility(entry: dict, start: dict, rule: GateRule) -> str | None:
    """None when a round's validation scores keep within tolerance of round 0's, else why not. An entry's
    `<score>_se` (the paired standard error of its change against round 0) widens the test; without one the
    point estimates are compared."""
    for key, label, tolerance_name in GUARDED:
        if key not in start:
            continue
        tolerance, margin = getattr(rule, tolerance_name), rule.z() * entry.get(f"{key}_se", 0.0)
        if entry[key] - margin < start[key] - tolerance - 1e-12:
            bound = f" (lower bound {entry[key] - margin:.3f})" if margin else ""
            return f"{label} {entry[key]:.3f}{bound} < {start[key]:.3f} - {tolerance:.2f}"
    return None


def paired_change_se(base: list[tuple[float, float]], other: list[tuple[float, float]]) -> float:
    """Standard error of sum(a)/sum(w) - sum(b)/sum(w) over the same items: `base` and `other` hold each
    item's (value, weight), e.g. (1 if correct else 0, 1) for a yes/no question or (ground-truth objects
    named, ground-truth objects) for a caption's recall. The weights must agree item by item."""
    if len(base) != len(other) or not base:
        raise ValueError(f"paired items differ: {len(base)} vs {len(other)}")
    total = sum(w for _, w in base)
    if any(wb != wo for (_, wb), (_, wo) in zip(base, other)) or not total:
        raise ValueError("paired items must carry the same weights (the same items scored twice)")
    diffs = [vo - vb for (vb, _), (vo, _) in zip(base, other)]
    n, mean = len(diffs), sum(diffs) / len(diffs)
    variance = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return math.sqrt(n * variance) / total


def choose_round(history: list[dict], rule: GateRule) -> dict:
    """history: validation scores per round, round 0 (before alignment) first. Returns the chosen round,
    why, and why each other round was passed over."""
    if not history or history[0]["round"] != 0:
        raise ValueError("the gate needs round 0 (the model before alignment) first in the history")
    start = history[0]
    verdicts = {h["round"]: eligibility(h, start, rule) for h in history}
    verdicts[0] = None
    eligible = [h for h in history if verdicts[h["round"]] is None]
    best = min(eligible, key=lambda h: (round(h[rule.metric], 9), -h["recall"], h["round"]))
    last = history[-1]["round"]
    if best["round"] == last:
        reason = f"round {last} (the last) has the lowest {rule.metric} within tolerance"
    elif best["round"] == 0:
        reason = "no round improved within tolerance: the model before alignment is kept"
    else:
        reason = f"round {best['round']} has the lowest {rule.metric} within tolerance"
    return {"chosen_round": best["round"], "reason": reason, "rule": rule.describe(), "settings": asdict(rule),
            "passed_over": {str(r): v for r, v in verdicts.items() if v is not None}}


def toy_validation_prompts(world, n: int, out_dir: Path, exclude: set[str], test_prompts: list[dict]) -> list[dict]:
    """n scenes of the toy world's `val` split, none drawn like a training or a test scene (images and
    prompts.jsonl written to out_dir)."""
    from halign.data_gen import toy_world

    from halign.data_gen.io import write_jsonl

    test = {toy_world.record_signature(rec) for rec in test_prompts}
    records = toy_world.write_prompts(world, "val", n, out_dir, exclude=set(exclude) | test)
    write_jsonl(Path(out_dir) / "prompts.jsonl", records)
    return records


def format_history(history: list[dict], chosen: int) -> list[str]:
    """One line per round for logs: validation scores, the chosen round marked."""
    lines = []
    for h in history:
        mark = "  <- kept" if h["round"] == chosen else ""
        pope = f"  POPE {h['pope_accuracy']:.3f} (yes {h['pope_yes_ratio']:.2f})" if "pope_accuracy" in h else ""
        lines.append(f"round {h['round']}: CHAIR_s {h['chair_s']:.3f}  CHAIR_i {h['chair_i']:.3f}  "
                     f"recall {h['recall']:.3f}{pope}{mark}")
    return lines
