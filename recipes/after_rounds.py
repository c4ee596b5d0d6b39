"""After the last round of the engine (recipes/runner.py): validation scores of every round, the gate's choice
(recipes/round_gate.py), with `eval.rounds: kept` the eval (test) records scored for the model before
alignment and the kept round only, and `RUN/rounds.json` / `rounds.png`.

Validation scores live in `RUN/validation/round_0/` (the base model) and `round_{r}/validation/`; each is
reused while its policy (for a round: its train stage key) and the validation records are unchanged, so a
resumed run scores nothing twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from halign.data_gen.io import stable_hash, write_json
from halign.recipes import stages
from halign.recipes.rounds import policy_path, round_dirs


def _train_key(round_dir: Path) -> str:
    return json.loads((round_dir / "train" / "stage_key.json").read_text())["key"]


def validate(ctx, base: str, records: list[dict]) -> list[dict]:
    """Validation scores of the base model (round 0) and each round's policy, each reused while the policy
    (for a round: its train stage key) and the validation records are unchanged."""
    from halign.recipes.scoring import cached_scores, score_into

    cfg, run_dir = ctx.cfg, ctx.run_dir
    records_key = stable_hash(records)
    history = []
    folders = [run_dir / "validation" / "round_0"] + [d / "validation" for d in round_dirs(cfg, run_dir)]
    for r, folder in enumerate(folders):
        policy = base if r == 0 else str(policy_path(cfg, folder.parent))
        identity = {"policy": policy, "train_key": None if r == 0 else _train_key(folder.parent),
                    "records": records_key}
        label = f"round {r} (validation)"
        metrics = cached_scores(folder, identity, lambda: score_into(
            folder, policy, records, stages.eval_metric(cfg), label, ctx.progress, **stages.score_kwargs(cfg)))
        entry = {"round": r, "policy": policy, **metrics}
        if r == 0:  # round 0's per-item results, read once: every round's change is paired against them
            base_items = _paired_items(folder)
        else:
            entry |= round_facts(folder.parent) | change_errors(base_items, folder)
        history.append(entry)
    return history


def _paired_items(folder: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """Per validation item, what the gate's guarded scores sum: recall's (objects named, objects), and a
    yes/no question's (correct, 1), keyed by score then item id."""
    from halign.recipes.scoring import YES_NO_NAMES

    captions = json.loads((folder / "report.json").read_text())["per_item"]
    items = {}
    if all("ground_truth" in c and ("covered" in c or "recall" in c) for c in captions):
        # Toy reports list the objects named ("covered"); CHAIR's give the per-caption recall instead.
        items["recall"] = {c["id"]: (len(c["covered"]) if "covered" in c else
                                     round(c["recall"] * len(c["ground_truth"])), len(c["ground_truth"]))
                           for c in captions}
    for name in YES_NO_NAMES.values():
        if (folder / f"{name}.json").exists():
            questions = json.loads((folder / f"{name}.json").read_text())["per_item"]
            items[f"{name}_accuracy"] = {q["id"]: (float(q["correct"]), 1.0) for q in questions}
    return items


def change_errors(base: dict, folder: Path) -> dict:
    """`<score>_se`: the paired standard error of a round's change against round 0 (`base`, its
    `_paired_items`) on the same validation items, for the scores the gate guards (round_gate.paired_change_se)."""
    from halign.recipes.round_gate import paired_change_se

    other = _paired_items(folder)
    errors = {}
    for key, items in other.items():
        ids = sorted(items)
        if key not in base or sorted(base[key]) != ids:
            raise ValueError(f"validation {key}: {folder} scored other items than round 0")
        errors[f"{key}_se"] = paired_change_se([base[key][i] for i in ids], [items[i] for i in ids])
    return errors


def round_facts(round_dir: Path) -> dict:
    """A round's pairs and the seconds its stages took (from their stage keys)."""
    seconds = 0.0
    for key in round_dir.glob("*/stage_key.json"):
        seconds += json.loads(key.read_text()).get("seconds", 0.0)
    return {"pairs": json.loads((round_dir / "pairs" / "summary.json").read_text())["pairs"],
            "seconds": round(seconds, 1)}


def score_kept(ctx, kept: int, base: str) -> dict:
    """eval.rounds: kept: the eval (test) records scored for the base model and the kept round only, each
    reused while its policy and the eval settings are unchanged. Returns {"before", "after"} flat metrics."""
    from halign.recipes.scoring import flat_metrics

    cfg, dirs = ctx.cfg, round_dirs(ctx.cfg, ctx.run_dir)
    records = _eval_records(ctx)
    stages.score_before(ctx, records, base)
    before = _reports(dirs[0] / "eval", "before")
    if kept == 0:
        return {"before": flat_metrics(*before), "after": flat_metrics(*before)}
    folder = dirs[kept - 1] / "eval"
    key = stable_hash({"stage": "eval", "config": stages.eval_stage_config(cfg), "upstream": _train_key(dirs[kept - 1])})
    if stages.read_key(folder) != key or not (folder / "report_after.json").exists():
        (folder / "stage_key.json").unlink(missing_ok=True)
        stages.score_round(ctx, kept, records)
        write_json(folder / "stage_key.json", {"stage": "eval", "key": key})
    return {"before": flat_metrics(*before), "after": flat_metrics(*_reports(folder, "after"))}


def _eval_records(ctx) -> list[dict]:
    from halign.recipes.inputs import eval_records

    return eval_records(ctx.cfg, round_dirs(ctx.cfg, ctx.run_dir)[0] / "eval")


def _reports(folder: Path, side: str) -> tuple[dict, dict | None]:
    """(caption report, yes/no report or None): POPE's for toy scenes, the clip questions' for toy clips."""
    from halign.recipes.scoring import YES_NO_NAMES

    found = [folder / f"{name}_{side}.json" for name in YES_NO_NAMES.values()
             if (folder / f"{name}_{side}.json").exists()]
    return (json.loads((folder / f"report_{side}.json").read_text()),
            json.loads(found[0].read_text()) if found else None)


def finish(ctx, base: str) -> dict:
    """After the last round: validation scores and the gate's choice (with a gate), the kept round's eval
    (eval.rounds: kept), `rounds.json` and `rounds.png`. Returns the summary written to rounds.json."""
    from halign.recipes.inputs import validation_records

    cfg, run_dir = ctx.cfg, ctx.run_dir
    validation = test = None
    if cfg["gate"] is not None:
        records = validation_records(cfg, run_dir, _eval_records(ctx))
        validation = validate(ctx, base, records)
    summary = summarize(cfg, run_dir, validation)
    if cfg["eval"] is not None and cfg["eval"]["rounds"] == "kept":
        test = score_kept(ctx, summary["kept_round"], base)
        kept = summary["kept_round"]
        dirs = round_dirs(cfg, run_dir)
        summary |= {"test": test, "test_n": test["before"]["n"], "validation_n": validation[0]["n"],
                    "kept_report": str(dirs[kept - 1] / "eval" / "report_after.json") if kept
                    else str(dirs[0] / "eval" / "report_before.json")}
        write_json(run_dir / "rounds.json", summary)
    return summary


def summarize(cfg: dict, run_dir: Path, validation: list[dict] | None = None) -> dict:
    """`rounds.json` (each round's policy, eval report and metrics; the base model's before round 1; with
    `validation` scores, the gate's decision) and `rounds.png` (validation scores against the round, the kept
    round marked; eval scores without a gate) in the run folder."""
    from halign.recipes.round_gate import GateRule, choose_round
    from halign.recipes.scoring import plot_rounds

    dirs, ev = round_dirs(cfg, run_dir), cfg["eval"]
    every = ev is not None and ev["rounds"] == "every"
    rounds = []
    for r, folder in enumerate(dirs, 1):
        entry = {"round": r, "policy": str(policy_path(cfg, folder))}
        if every:
            report = folder / "eval" / "report_after.json"
            entry |= {"report": str(report), "metrics": json.loads(report.read_text())["metrics"]}
        rounds.append(entry)
    before = None
    if every and ev["before"]:
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
    write_json(Path(run_dir) / "rounds.json", summary)
    if validation is not None:
        plot_rounds(validation, Path(run_dir) / "rounds.png", chosen=kept)
    elif every:
        history = ([{"round": 0, **before}] if before else []) + [{"round": e["round"], **e["metrics"]}
                                                                  for e in rounds]
        plot_rounds(history, Path(run_dir) / "rounds.png")
    return summary
