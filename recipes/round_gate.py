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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


CAPTION_KEYS = ("chair_s", "chair_i", "recall", "mean_len", "n")
POPE_KEYS = ("accuracy", "f1", "yes_ratio")


@dataclass(frozen=True)
class GateRule:
    metric: str = field(default="chair_i", metadata={"help": "minimised on validation: chair_i or chair_s"})
    recall_tolerance: float = field(default=0.03, metadata={
        "help": "a round may lose at most this much validation recall against round 0 ..."})
    pope_tolerance: float = field(default=0.01, metadata={
        "help": "... and at most this much POPE accuracy (toy clips: the clip questions' accuracy)"})
    val_scenes: int = field(default=200, metadata={"help": "toy world: size of the validation split"})

    def __post_init__(self):
        if self.metric not in ("chair_i", "chair_s"):
            raise ValueError(f"gate metric must be 'chair_i' or 'chair_s', got {self.metric!r}")
        if self.recall_tolerance < 0 or self.pope_tolerance < 0:
            raise ValueError("gate tolerances must be >= 0")
        if self.val_scenes < 1:
            raise ValueError("gate val_scenes must be >= 1")

    def describe(self) -> str:
        return (f"lowest validation {self.metric} among rounds whose recall is at most {self.recall_tolerance:.2f} "
                f"and POPE (toy clips: clip-question) accuracy at most {self.pope_tolerance:.2f} below round 0's "
                f"(ties: higher recall, then the earlier round)")


def eligibility(entry: dict, start: dict, rule: GateRule) -> str | None:
    """None when a round's validation scores keep within tolerance of round 0's, else why not."""
    if entry["recall"] < start["recall"] - rule.recall_tolerance - 1e-12:
        return f"recall {entry['recall']:.3f} < {start['recall']:.3f} - {rule.recall_tolerance:.2f}"
    if "pope_accuracy" in start and entry["pope_accuracy"] < start["pope_accuracy"] - rule.pope_tolerance - 1e-12:
        return f"POPE accuracy {entry['pope_accuracy']:.3f} < {start['pope_accuracy']:.3f} - {rule.pope_tolerance:.2f}"
    # Toy clips: their temporal and existence questions hold the place of POPE, with the same tolerance.
    if "qa_accuracy" in start and entry["qa_accuracy"] < start["qa_accuracy"] - rule.pope_tolerance - 1e-12:
        return (f"clip-question accuracy {entry['qa_accuracy']:.3f} < {start['qa_accuracy']:.3f} - "
                f"{rule.pope_tolerance:.2f}")
    return None


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
