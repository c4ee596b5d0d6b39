"""`halign run RECIPE.yaml [key=value ...] [--dry-run] [--out DIR]`: the pipeline engine, the one
orchestrator of halign's stages. `halign rlaif`, `halign demo` and `halign gen-pairs` build a recipe config
and call `run_config` here.

The stages of one round are the table `recipes/stages.py:STAGES` (sample -> judge -> [omissions] -> pairs ->
[train] -> [eval]); rounds are recipes/rounds.py, and validation scoring, the gate and the kept round's eval
after them recipes/after_rounds.py.
Each stage folder gets `stage_key.json`: a hash of the stage's resolved config, the upstream stage's key
and the hashes of external inputs (prompt file, local checkpoint). A rerun skips a stage whose key is
unchanged and whose outputs exist; a changed key reruns that stage and, because keys chain, every stage
after it. `runs.jsonl` in the run folder logs which stages ran on each invocation.

Round r's sample key chains from round r-1's train key, so a rerun skips finished rounds and a changed key
reruns from that stage in the earliest round it affects. `RUN/rounds.json` and `rounds.png` track the rounds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from halign.data_gen.io import ensure_writable_dir, stable_hash, write_json
from halign.recipes import config as recipe_config
from halign.recipes import after_rounds, inputs, rounds, stages


# --- plan ------------------------------------------------------------------------------------------

def stage_configs(cfg: dict) -> dict[str, dict | None]:
    """What each stage's key hashes besides the upstream key (`cfg`: the round's, see rounds.round_config);
    None for a stage the recipe does not run."""
    configs = {
        "sample": {"model": inputs.model_identity(cfg), "source": inputs.source_identity(cfg["source"]),
                   "sample": cfg["sample"], "seed": cfg["seed"]},
        "judge": cfg["judge"],
        "omissions": {"omission_negatives": True},
        "pairs": cfg["pairs"],
        "train": None if cfg["train"] is None else {**cfg["train"], **cfg["train_resolved"]},
        "eval": stages.eval_stage_config(cfg),
    }
    return {s.name: configs[s.name] if s.runs_when(cfg) else None for s in stages.STAGES}


def make_plan(cfg: dict, run_dir: Path) -> list[dict]:
    """One step per stage and round, in execution order. Within a round each stage chains from the one
    before; round r's sample chains from round r-1's train (not its eval: an eval change reruns evals only)."""
    plan, upstream, rerun = [], None, False
    train_key, train_reruns = None, False
    for r, round_dir in enumerate(rounds.round_dirs(cfg, run_dir), 1):
        for stage, stage_cfg in stage_configs(rounds.round_config(cfg, r)).items():
            if stage_cfg is None:
                continue
            key = stable_hash({"stage": stage, "config": stage_cfg, "upstream": upstream})
            folder = round_dir / stage
            old = stages.read_key(folder)
            missing = [o for o in stages.outputs(stage, cfg, r) if not (folder / o).exists()]
            if rerun:
                reason = "an earlier stage reruns"
            elif old is None:
                reason = "never ran"
            elif old != key:
                reason = "config or inputs changed"
            elif missing:
                reason = f"output missing: {missing[0]}"
            else:
                reason = None
            plan.append({"round": r, "stage": stage, "folder": str(folder.relative_to(run_dir)), "key": key,
                         "action": "run" if reason else "skip", "reason": reason or "unchanged", "config": stage_cfg})
            if stage == "train":
                train_key, train_reruns = key, rerun or reason is not None
            if stage != "eval":  # nothing chains from an eval
                upstream, rerun = key, rerun or reason is not None
        upstream, rerun = train_key, train_reruns
    return plan


# --- execution -------------------------------------------------------------------------------------

def run_recipe(recipe: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
               dry_run: bool = False, progress: bool = True, log=print) -> dict:
    """Python API of `halign run`; returns {"run_dir", "plan", "notes", "config", "ran": [stage folders run],
    "policy": the last round's trained checkpoint, "report": its eval report (None without eval)}; with a
    gate also "kept_policy", "kept_report" and "summary" (rounds.json)."""
    cfg = recipe_config.resolve(recipe_config.apply_overrides(recipe_config.load_recipe(recipe), overrides or []))
    run_dir = Path(out) if out else Path("halign_runs") / Path(recipe).stem
    return run_config(cfg, run_dir, overrides, dry_run, progress, log)


def run_config(cfg: dict, run_dir: str | Path, overrides: list[str] | None = None, dry_run: bool = False,
               progress: bool = True, log=print) -> dict:
    """Run a resolved recipe config (recipes/config.py `resolve`) in run_dir: the engine behind every
    command that chains stages."""
    run_dir = Path(run_dir)
    plan, notes = make_plan(cfg, run_dir), recipe_config.notes(cfg)
    last = rounds.round_dirs(cfg, run_dir)[-1]
    every = cfg["eval"] is not None and cfg["eval"]["rounds"] == "every"
    result = {"run_dir": str(run_dir), "plan": plan, "notes": notes, "config": cfg, "ran": [],
              "policy": None if cfg["train"] is None else str(rounds.policy_path(cfg, last)),
              "report": str(last / "eval" / "report_after.json") if every else None}
    if dry_run:
        log(render_plan(cfg, plan, notes, run_dir))
        return result
    if notes:
        raise ValueError("cannot execute this recipe: " + "; ".join(notes))
    ensure_writable_dir(run_dir)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(public_config(cfg), sort_keys=False))
    started = time.time()
    todo = [p for p in plan if p["action"] == "run"]
    gated = cfg["gate"] is not None
    base = inputs.model_path(cfg, log if progress else None) if todo or gated else cfg["model"]
    ctx = stages.Context(cfg, run_dir, progress, log)
    dirs = rounds.round_dirs(cfg, run_dir)
    for r in range(1, cfg["rounds"] + 1):
        steps = [p for p in plan if p["round"] == r]
        if rounds.per_round_folders(cfg) and all(p["action"] == "skip" for p in steps):
            log(f"round {r}: already finished (every stage unchanged), policy {rounds.policy_path(cfg, dirs[r - 1])}")
            continue
        for step in steps:
            if step["action"] == "skip":
                log(f"[{step['folder']}] skipped: unchanged (key {step['key'][:12]})")
                continue
            log(f"[{step['folder']}] running ({step['reason']})")
            folder = run_dir / step["folder"]
            # A stale key must not survive a crash halfway through the stage.
            (folder / "stage_key.json").unlink(missing_ok=True)
            t0 = time.time()
            ckpt = base if r == 1 else str(rounds.policy_path(cfg, dirs[r - 2]))
            stages.stage(step["stage"]).run(ctx, r, ckpt)
            write_json(folder / "stage_key.json", {"stage": step["stage"], "key": step["key"],
                                                   "config": step["config"], "seconds": round(time.time() - t0, 2)})
            result["ran"].append(step["folder"])
    with (run_dir / "runs.jsonl").open("a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": overrides or [],
                             "ran": result["ran"], "skipped": [p["folder"] for p in plan if p["action"] == "skip"],
                             "seconds": round(time.time() - started, 2)}) + "\n")
    ctx.loaded.clear()  # the policy kept for a self-labelling judge
    if rounds.per_round_folders(cfg) and cfg["train"] is not None:
        summary_path = run_dir / "rounds.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        kept_eval_missing = summary is not None and not every and cfg["eval"] is not None and "test" not in summary
        if result["ran"] or summary is None or kept_eval_missing:
            summary = after_rounds.finish(ctx, base)  # else nothing changed: what the last run decided stands
        result["summary"] = summary
        if "gate" in summary:
            log(f"gate: {summary['gate']['reason']}; kept policy {summary['kept_policy']}")
            result |= {"kept_policy": summary["kept_policy"], "kept_report": summary["kept_report"]}
            if not every and cfg["eval"] is not None:  # eval.rounds: kept: the report is the kept round's
                result["report"] = summary["kept_report"]
    compare_md = dirs[-1] / "eval" / "compare" / "compare.md"
    if compare_md.exists() and plan[-1]["action"] == "run" and plan[-1]["stage"] == "eval":
        log(compare_md.read_text())  # the last round against the base model
    if cfg["eval"] is not None and cfg["eval"]["before"] and (result["ran"] or not (run_dir / "report.html").exists()):
        from halign.recipes.html_runs import write_kept_html, write_run_html

        if every:
            write_run_html(cfg, run_dir)  # RUN/report.html: the base model against each round, per item
        else:
            write_kept_html(run_dir, result["summary"])  # the base model against the kept round
    return result


def public_config(cfg: dict) -> dict:
    """The resolved config as a recipe would state it (train.dpo / train.peft with halign's defaults applied)."""
    out = {k: v for k, v in cfg.items() if k != "train_resolved"}
    if cfg["train"] is not None:
        out["train"] = {**cfg["train"], **cfg["train_resolved"]}
    return out


def render_plan(cfg: dict, plan: list[dict], notes: list[str], run_dir: Path) -> str:
    lines = [f"run folder: {run_dir}", "resolved config:",
             yaml.safe_dump(public_config(cfg), sort_keys=False).rstrip(), "", "plan:"]
    lines += rounds.render(cfg, plan)
    if cfg["train"] is not None and cfg["train"]["accelerate_config"]:
        argv, env = stages.launch(cfg, rounds.round_dirs(cfg, run_dir)[0] / "train_config.json")
        lines.append("  train launches: " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(argv))
    if notes:
        lines += ["", "execution would refuse (dry-run only reports these):"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


def _flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dry-run", action="store_true", help="print the plan and validate; load no model")
    parser.add_argument("--out", default=None, help="run folder (default: halign_runs/RECIPE_NAME)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe YAML (a path, or the name of a shipped recipe)")
    parser.add_argument("--keys", action="store_true", help="list the engine's recipe keys with their help, then exit")
    # REMAINDER, re-parsed in main(): flags may come after the overrides (`run r.yaml k=v --dry-run`).
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value overrides (YAML values)")
    _flags(parser)


def main(args: argparse.Namespace) -> int:
    if args.keys:
        from halign.recipes.sections import describe_keys

        print("\n".join(describe_keys()))
        return 0
    if not args.recipe:
        raise ValueError("a recipe is required (a YAML path or the name of a shipped recipe)")
    late, overrides = _flags(argparse.ArgumentParser(add_help=False)).parse_known_args(args.overrides)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        raise ValueError(f"unknown option {bad[0]}")
    run_recipe(args.recipe, overrides, late.out or args.out, args.dry_run or late.dry_run,
               progress=not (args.no_progress or late.no_progress))
    return 0
