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

With an eval, the `gate` (recipes/round_gate.py) keeps the best round, not the last: the base model and each
round's policy are scored on validation records (`round_{r}/validation/`, `RUN/validation/round_0/`), and
`rounds.json` names the kept round and its policy (`kept_policy`, `kept_report`).
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


def validate(cfg: dict, run_dir: Path, base: str, records: list[dict], metric, progress: bool) -> list[dict]:
    """Validation scores of the base model (round 0) and each round's policy, each reused while the policy
    (for a round: its train stage key) and the validation records are unchanged."""
    from halign.data_gen.io import stable_hash
    from halign.recipes.rlaif import cached_scores, score

    records_key = stable_hash(records)
    history = []
    for r, folder in enumerate([run_dir / "validation" / "round_0"] + [d / "validation" for d in round_dirs(cfg, run_dir)]):
        policy = base if r == 0 else str(policy_path(cfg, folder.parent))
        trained = None if r == 0 else json.loads((folder.parent / "train" / "stage_key.json").read_text())["key"]
        identity = {"policy": policy, "train_key": trained, "records": records_key}
        metrics = cached_scores(folder, identity, lambda: score(policy, records, metric, folder,
                                                                f"round {r} (validation)", progress))
        history.append({"round": r, "policy": policy, **metrics})
    return history


def summarize(cfg: dict, run_dir: Path, validation: list[dict] | None = None) -> dict:
    """`rounds.json` (each round's policy, report and metrics; the base model's before round 1; with
    `validation` scores, the gate's decision) and `rounds.png` (validation scores against the round, the kept
    round marked; test scores without a gate) in the run folder."""
    from halign.recipes.rlaif import plot_rounds
    from halign.recipes.round_gate import GateRule, choose_round

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
    kept = None
    if validation is not None:
        gate = choose_round(validation, GateRule(**{k: v for k, v in cfg["gate"].items() if k != "source"}))
        kept = gate["chosen_round"]
        summary |= {"gate": gate, "validation": validation, "kept_round": kept,
                    "kept_policy": validation[kept]["policy"],
                    "kept_report": rounds[kept - 1].get("report") if kept else str(dirs[0] / "eval" / "report_before.json")}
    write_json(run_dir / "rounds.json", summary)
    if validation is not None:
        plot_rounds(validation, run_dir / "rounds.png", chosen=kept)
    elif ev is not None:
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

