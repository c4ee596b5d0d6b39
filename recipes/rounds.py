"""Rounds of iterative RLAIF in the engine (recipes/runner.py): folders, per-round configs, the policy each
round leaves. What happens after the last round (validation scores, the gate, the kept round's eval,
rounds.json) is recipes/after_rounds.py.

Round r samples with the policy that round r-1 trained (round 1: the recipe's model), judges, builds pairs,
trains and (with `eval.rounds: every`) evaluates, each stage in `RUN/round_{r}/<stage>/`. A one-round recipe
without a gate keeps the flat layout (`RUN/<stage>/`), so its run folders and stage keys are what they were
before rounds existed.

What changes from round to round (`round_config`): the source takes its next slice (recipes/inputs.py: a
source's `n` is per round; a JSONL source without `n` is the same pool every round), and the sample / pairs /
DPO seeds advance by r-1. The eval set is the same every round, so the rounds are comparable.

LoRA rounds train a fresh adapter on the previous round's policy, then merge it into a standalone
checkpoint (`train/merged/`) that the next round (or the kept round's scoring) loads like any checkpoint.

The gate (recipes/round_gate.py) keeps the best round, not the last: the base model (`RUN/validation/round_0/`)
and each round's policy (`round_{r}/validation/`) are scored on validation records, and `rounds.json` names
the kept round and its policy (`kept_policy`, `kept_report`). With `eval.rounds: kept` the eval records are a
test split looked at once: only the base model and the kept round are scored on them, after the gate chose.
"""

from __future__ import annotations

import copy
from pathlib import Path



def per_round_folders(cfg: dict) -> bool:
    """`round_{r}/` folders whenever the run has several policies to keep apart: several rounds, or one
    round that the gate weighs against the model before alignment."""
    return cfg["rounds"] > 1 or cfg["gate"] is not None


def round_dirs(cfg: dict, run_dir: Path) -> list[Path]:
    """Each round's folder, round 1 first; with one round and no gate, the run folder itself."""
    if not per_round_folders(cfg):
        return [Path(run_dir)]
    return [Path(run_dir) / f"round_{r}" for r in range(1, cfg["rounds"] + 1)]


def round_config(cfg: dict, r: int) -> dict:
    """The recipe config that round r (1-based) executes; round 1's is the recipe's own."""
    from halign.recipes.inputs import round_source

    out, i = copy.deepcopy(cfg), r - 1
    out["source"] = round_source(out["source"], r) if r > 1 else out["source"]
    # Fresh randomness each round (seed + round - 1); + 0 in round 1 keeps one-round keys.
    out["sample"]["seed"] += i
    out["pairs"]["seed"] += i
    if out["train"] is not None:
        for dpo in (out["train"]["dpo"], out["train_resolved"]["dpo"]):
            dpo["seed"] += i
    return out


def merges(cfg: dict) -> bool:
    """Whether each round's LoRA adapter is merged: the next round, or the gate's scoring, loads it as a
    plain checkpoint (a single round without a gate needs no standalone copy)."""
    return cfg["train"] is not None and cfg["train"]["peft"] is not None and per_round_folders(cfg)


def policy_path(cfg: dict, round_dir: Path) -> Path:
    """The checkpoint a round trained: what its eval scores and the next round samples and trains from.
    Absolute, because the next round's adapter records it as its base model."""
    train = Path(round_dir).resolve() / "train"
    return train / "merged" if merges(cfg) else train


def merge_policy(cfg: dict, round_dir: Path) -> Path:
    from halign.align.export import merge_adapter

    return merge_adapter(Path(round_dir) / "train", policy_path(cfg, round_dir), dtype=cfg["train"]["dtype"])


def render(cfg: dict, plan: list[dict]) -> list[str]:
    """The plan's lines, under one heading per round when there are round folders."""
    lines, nested = [], per_round_folders(cfg)
    for step in plan:
        if nested and step["stage"] == "sample":
            policy = "the recipe's model" if step["round"] == 1 else f"round {step['round'] - 1}'s policy"
            lines.append(f"  round {step['round']} of {cfg['rounds']} (round_{step['round']}/, from {policy})")
        indent = "    " if nested else "  "
        lines.append(f"{indent}{step['stage']:<9} {step['action']:<5} {step['reason']:<28} key {step['key'][:12]}")
    if cfg["gate"] is not None:
        after = "validation scores, the gate"
        if cfg["eval"] is not None and cfg["eval"]["rounds"] == "kept":
            after += ", then the eval records for the model before alignment and the kept round"
        lines.append(f"  after the rounds: {after}")
    return lines
