"""Iterative RLAIF rounds in `halign run` (`rounds: R`), run as `halign rlaif` runs them.

Round r samples with the policy that round r-1 trained (round 1: the recipe's model), judges, builds pairs,
trains and evaluates, each stage in `RUN/round_{r}/<stage>/`. A one-round recipe keeps the flat layout
(`RUN/<stage>/`), so its run folders and stage keys are what they were before rounds existed.

What changes from round to round (`round_config`): a toy-world source draws fresh scenes (round r takes
slice r of the scene stream, as `halign rlaif` does), and the sample / pairs / DPO seeds advance by r-1.
A JSONL source is the same prompt pool every round, as RLAIF-V samples its pool again with each new policy.
The eval set is the same every round, so the rounds are comparable.

LoRA rounds train a fresh adapter on the previous round's policy, then merge it into a standalone
checkpoint (`train/merged/`) that the next round loads like any checkpoint; full fine-tuning needs no merge.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from halign.data_gen.io import write_json


def round_dirs(cfg: dict, run_dir: Path) -> list[Path]:
    """Each round's folder, round 1 first; with one round, the run folder itself."""
    if cfg["rounds"] == 1:
        return [run_dir]
    return [run_dir / f"round_{r}" for r in range(1, cfg["rounds"] + 1)]


def round_config(cfg: dict, r: int) -> dict:
    """The recipe config that round r (1-based) executes; round 1's is the recipe's own."""
    from halign.recipes.rlaif import round_slice

    out, i = copy.deepcopy(cfg), r - 1
    src = out["source"]
    if src["type"] == "toy_world":
        src["start"] = round_slice(i, src["n"], src["start"]).start
    # Fresh randomness each round, as `halign rlaif` (seed + round); + 0 in round 1 keeps one-round keys.
    out["sample"]["seed"] += i
    out["pairs"]["seed"] += i
    for dpo in (out["train"]["dpo"], out["train_resolved"]["dpo"]):
        dpo["seed"] += i
    return out


def merges(cfg: dict) -> bool:
    """Whether each round's LoRA adapter is merged for the next round (one round needs no standalone copy)."""
    return cfg["rounds"] > 1 and cfg["train"]["peft"] is not None


def policy_path(cfg: dict, round_dir: Path) -> Path:
    """The checkpoint a round trained: what its eval scores and the next round samples and trains from.
    Absolute, because the next round's adapter records it as its base model."""
    train = round_dir.resolve() / "train"
    return train / "merged" if merges(cfg) else train


def merge_policy(cfg: dict, round_dir: Path) -> Path:
    from halign.align.export import merge_adapter

    return merge_adapter(round_dir / "train", policy_path(cfg, round_dir), dtype=cfg["train"]["dtype"])


def summarize(cfg: dict, run_dir: Path) -> dict:
    """`rounds.json` (each round's policy, report and metrics; the base model's before round 1) and
    `rounds.png` (hallucination against the round) in the run folder."""
    from halign.recipes.rlaif import plot_rounds

    dirs, ev = round_dirs(cfg, run_dir), cfg["eval"]
    rounds = []
    for r, folder in enumerate(dirs, 1):
        entry = {"round": r, "policy": str(policy_path(cfg, folder))}
        if ev is not None:
            report = folder / "eval" / "report_after.json"
            entry |= {"report": str(report), "metrics": json.loads(report.read_text())["metrics"]}
        rounds.append(entry)
    before = None
    if ev is not None and ev["before"]:
        before = json.loads((dirs[0] / "eval" / "report_before.json").read_text())["metrics"]
    summary = {"rounds": rounds, "before": before, "final_policy": rounds[-1]["policy"],
               "final_report": rounds[-1].get("report")}
    write_json(run_dir / "rounds.json", summary)
    if ev is not None:
        history = ([{"round": 0, **before}] if before else []) + [{"round": e["round"], **e["metrics"]}
                                                                  for e in rounds]
        plot_rounds(history, run_dir / "rounds.png")
    return summary


def render(cfg: dict, plan: list[dict]) -> list[str]:
    """The plan's lines, under one heading per round when there are several."""
    lines = []
    for step in plan:
        if cfg["rounds"] > 1 and step["stage"] == "sample":
            policy = "the recipe's model" if step["round"] == 1 else f"round {step['round'] - 1}'s policy"
            lines.append(f"  round {step['round']} of {cfg['rounds']} (round_{step['round']}/, from {policy})")
        indent = "    " if cfg["rounds"] > 1 else "  "
        lines.append(f"{indent}{step['stage']:<7} {step['action']:<5} {step['reason']:<28} key {step['key'][:12]}")
    return lines

