"""`halign run RECIPE.yaml [key=value ...] [--dry-run] [--out DIR]`: a recipe's stages in one run folder.

sample -> judge -> pairs -> train -> eval, each through the stage's own function (the same code path as
its CLI). Each stage folder gets `stage_key.json`: a hash of the stage's resolved config, the upstream
stage's key and the hashes of external inputs (prompt file, local checkpoint). A rerun skips a stage whose
key is unchanged and whose outputs exist; a changed key reruns that stage and, because keys chain, every
stage after it. `runs.jsonl` in the run folder logs which stages ran on each invocation.

`rounds: R > 1` runs R rounds of iterative RLAIF, each in `RUN/round_{r}/` (recipes/rounds.py): round r's
sample key chains from round r-1's train key, so a rerun skips finished rounds and a changed key reruns
from that stage in the earliest round it affects. `RUN/rounds.json` and `rounds.png` track the rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

from halign.data_gen.io import ensure_writable_dir, file_sha256, read_records, stable_hash, write_json, write_jsonl
from halign.recipes import config as recipe_config
from halign.recipes import rounds

STAGES = ("sample", "judge", "pairs", "train", "eval")


def outputs(stage: str, cfg: dict, r: int) -> list[str]:
    """Files a finished stage of round r leaves in its folder: one missing reruns the stage."""
    if stage == "train":
        return ["manifest.json"] + (["merged/config.json"] if rounds.merges(cfg) else [])
    if stage == "eval":  # round 1 also holds the base model's report, which every round compares against
        return ["report_after.json"] + (["report_before.json"] if cfg["eval"]["before"] and r == 1 else [])
    return {"sample": ["candidates.jsonl", "prompts.jsonl"], "judge": ["judgments.jsonl"],
            "pairs": ["dataset/dataset_info.json", "summary.json"]}[stage]


# --- model and inputs ------------------------------------------------------------------------------

def toy_checkpoint_config(cfg: dict):
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig
    from halign.data_gen.toy_world import ToyWorldConfig

    # As in `halign demo`: the recipe seed seeds the world and the checkpoint.
    return ToyCheckpointConfig(world=ToyWorldConfig(seed=cfg["seed"]), seed=cfg["seed"], **cfg["toy_checkpoint"])


def model_identity(cfg: dict) -> str:
    """What the model is, for stage keys, without loading (or building) it."""
    if cfg["model"] == "toy":
        return "toy:" + toy_checkpoint_config(cfg).key()
    path = Path(cfg["model"])
    if path.is_dir():
        # Names and sizes of every file, contents of the small ones (configs): cheap, and any retrained
        # or swapped checkpoint changes it. Weights are not hashed byte by byte (gigabytes).
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return "dir:" + stable_hash([(str(p.relative_to(path)), p.stat().st_size,
                                      file_sha256(p) if p.stat().st_size < 1 << 20 else None) for p in files])
    return "hub:" + cfg["model"]


def model_path(cfg: dict) -> str:
    if cfg["model"] != "toy":
        return cfg["model"]
    from halign.data_gen.toy_checkpoint import get_toy_checkpoint

    return str(get_toy_checkpoint(toy_checkpoint_config(cfg), progress=False))


def source_identity(src: dict) -> dict:
    if src["type"] == "jsonl" and Path(src["path"]).is_file():
        return {**src, "sha256": file_sha256(src["path"])}
    if src["type"] == "toy_world" and not src.get("qa_fraction"):
        # qa_fraction 0 draws exactly the prompts drawn before the key existed: those runs keep their keys.
        return {k: v for k, v in src.items() if k != "qa_fraction"}
    return src


def write_source(cfg: dict, src: dict, out_dir: Path, seen: set[str] | None = None) -> Path:
    """Prompt records for a source, as prompts.jsonl in out_dir (toy-world images drawn next to it)."""
    if src["type"] == "jsonl":
        records = read_records(src["path"])
        if src.get("max_images"):
            # Video: frames are a multi-image input; keep max_images frames spread evenly over the clip.
            for rec in records:
                frames, m = rec.get("images", []), src["max_images"]
                if len(frames) > m:
                    rec["images"] = [frames[round(i * (len(frames) - 1) / (m - 1))] if m > 1 else frames[0]
                                     for i in range(m)]
        return write_jsonl(out_dir / "prompts.jsonl", records)
    from halign.data_gen import toy_world

    world = toy_world.ToyWorldConfig(**{"seed": cfg["seed"], **(src["world"] or {})})
    records = toy_world.write_prompts(world, src["split"], src["n"], out_dir, src["start"], exclude=seen,
                                      qa_fraction=src.get("qa_fraction", 0.0))
    return write_jsonl(out_dir / "prompts.jsonl", records)


def seen_scenes(cfg: dict) -> set[str]:
    """Drawings used to train (toy SFT + every round's DPO source): an `exclude_seen` eval holds them out, as
    the demo does. `cfg` is the recipe's, not a round's: rounds take consecutive slices of the source."""
    from halign.data_gen import toy_world

    seen: set[str] = set()
    if cfg["model"] == "toy":
        ckpt = toy_checkpoint_config(cfg)
        seen |= toy_world.signatures(ckpt.world, "sft", ckpt.sft_scenes)
    src = cfg["source"]
    if src["type"] == "toy_world":
        world = toy_world.ToyWorldConfig(**{"seed": cfg["seed"], **(src["world"] or {})})
        seen |= toy_world.signatures(world, src["split"], cfg["rounds"] * src["n"], src["start"])
    return seen


# --- plan ------------------------------------------------------------------------------------------

def stage_configs(cfg: dict) -> dict[str, dict]:
    """What each stage's key hashes besides the upstream key (`cfg`: the round's, see rounds.round_config)."""
    ev = cfg["eval"]
    if ev is not None:
        ev = {**ev, "source": source_identity(ev["source"])}
        if cfg["rounds"] > 1 and ev["source"]["type"] == "toy_world" and ev["source"]["exclude_seen"]:
            ev["held_out_rounds"] = cfg["rounds"]  # more rounds hold out more scenes: a different eval set
    return {
        "sample": {"model": model_identity(cfg), "source": source_identity(cfg["source"]), "sample": cfg["sample"],
                   "seed": cfg["seed"]},
        "judge": cfg["judge"],
        "pairs": cfg["pairs"],
        "train": {**cfg["train"], **cfg["train_resolved"]},
        "eval": ev,
    }


def make_plan(cfg: dict, run_dir: Path) -> list[dict]:
    """One step per stage and round, in execution order. Within a round each stage chains from the one
    before; round r's sample chains from round r-1's train (not its eval: an eval change reruns evals only)."""
    plan, upstream, rerun = [], None, False
    for r, round_dir in enumerate(rounds.round_dirs(cfg, run_dir), 1):
        for stage, stage_cfg in stage_configs(rounds.round_config(cfg, r)).items():
            if stage_cfg is None:
                continue
            key = stable_hash({"stage": stage, "config": stage_cfg, "upstream": upstream})
            folder = round_dir / stage
            old = _read_key(folder)
            missing = [o for o in outputs(stage, cfg, r) if not (folder / o).exists()]
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


def _read_key(folder: Path) -> str | None:
    try:
        return json.loads((folder / "stage_key.json").read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


# --- execution -------------------------------------------------------------------------------------

def run_stage(stage: str, cfg: dict, r: int, run_dir: Path, ckpt: str, progress: bool) -> None:
    """Stage `stage` of round r, starting from checkpoint `ckpt` (cfg: the recipe's; run_dir: the run folder)."""
    if stage == "eval":  # the same eval set every round: the recipe's config, not the round's
        eval_stage(cfg, r, run_dir, ckpt, progress)
        return
    round_dir, cfg = rounds.round_dirs(cfg, run_dir)[r - 1], rounds.round_config(cfg, r)
    folder = round_dir / stage
    if stage == "sample":
        from halign.data_gen.sample import SampleConfig, run

        prompts = write_source(cfg, cfg["source"], round_dir / "source")
        run(SampleConfig(model=ckpt, **cfg["sample"]), prompts, folder, progress=progress)
    elif stage == "judge":
        from halign.rewards.judges.cli import run_judge

        options = {k: v for k, v in cfg["judge"].items() if k != "name"}
        run_judge(cfg["judge"]["name"], round_dir / "sample" / "candidates.jsonl", folder / "judgments.jsonl",
                  options=options, progress=progress)
    elif stage == "pairs":
        from halign.data_gen.pairs import PairsConfig, run

        run(PairsConfig(**cfg["pairs"]), round_dir / "judge" / "judgments.jsonl",
            round_dir / "sample" / "candidates.jsonl", round_dir / "sample" / "prompts.jsonl", folder)
    elif stage == "train":
        train_stage(cfg, round_dir, ckpt, progress)


def train_config(cfg: dict, round_dir: Path, ckpt: str) -> dict:
    t = cfg["train"]
    return {"model": ckpt, "pairs": str(round_dir / "pairs" / "dataset"), "output_dir": str(round_dir / "train"),
            "dpo": t["dpo"], "peft": t["peft"], "dtype": t["dtype"], "mdpo": t["mdpo"],
            "quantization": t["quantization"], "fast": t.get("fast", True), "row_tokens": t.get("row_tokens")}


def launch_command(cfg: dict, config_json: Path) -> list[str]:
    """Multi-GPU training: accelerate starts one process per GPU, each runs this module's __main__."""
    acc = recipe_config.accelerate_config_path(cfg["train"]["accelerate_config"])
    return ["accelerate", "launch", "--config_file", str(acc), "-m", "halign.recipes.runner", str(config_json)]


def train_stage(cfg: dict, round_dir: Path, ckpt: str, progress: bool) -> None:
    from halign.align.dpo import TrainConfig, train

    tc = train_config(cfg, round_dir, ckpt)
    if cfg["train"]["accelerate_config"]:
        config_json = write_json(round_dir / "train_config.json", tc)
        subprocess.run(launch_command(cfg, config_json), check=True)
    else:
        train(TrainConfig(**tc), progress=progress)
    if rounds.merges(cfg):  # the next round loads this round's policy as a plain checkpoint
        rounds.merge_policy(cfg, round_dir)


def eval_stage(cfg: dict, r: int, run_dir: Path, ckpt: str, progress: bool) -> None:
    """Round r's policy on the eval set; with eval.before, against the base model (scored once, in round 1)."""
    from halign.align.model import load_policy
    from halign.recipes.compare import run_compare
    from halign.recipes.evaluate import evaluate

    dirs = rounds.round_dirs(cfg, run_dir)
    ev, folder, before = cfg["eval"], ensure_writable_dir(dirs[r - 1] / "eval"), dirs[0] / "eval"
    seen = seen_scenes(cfg) if ev["source"]["type"] == "toy_world" and ev["source"]["exclude_seen"] else None
    prompts = read_records(write_source(cfg, ev["source"], folder / "source", seen))
    metric = eval_metric(cfg)
    kwargs = {"max_new_tokens": ev["max_new_tokens"], "batch_size": ev["batch_size"], "progress": progress}
    if ev["before"] and r == 1:  # ckpt is the recipe's model in round 1
        # The base model's report depends on the base model and eval settings only: a judge or training
        # change reruns this stage but reuses report_before.json.
        before_key = stable_hash({"model": model_identity(cfg), "eval": stage_configs(cfg)["eval"]})
        if _read_key(before / "before") != before_key or not (before / "report_before.json").exists():
            model, processor = load_policy(ckpt)
            write_json(before / "report_before.json",
                       evaluate(model, processor, prompts, metric, ckpt, desc="scoring before", **kwargs))
            write_json(before / "before" / "stage_key.json", {"key": before_key})
    policy = rounds.policy_path(cfg, dirs[r - 1])
    model, processor = load_policy(policy)
    desc = "scoring after" if cfg["rounds"] == 1 else f"scoring round {r}"
    write_json(folder / "report_after.json", evaluate(model, processor, prompts, metric, str(policy), desc=desc,
                                                      **kwargs))
    if ev["before"]:
        run_compare([before / "report_before.json", folder / "report_after.json"], folder / "compare")


def eval_metric(cfg: dict):
    """The eval section's metric: exact toy-world object hallucination, or CHAIR with the recipe's options."""
    if cfg["eval"]["benchmark"] == "toy":
        from halign.recipes.evaluate import toy_metric

        return toy_metric()
    from halign.rewards.chair import ChairMetric

    return ChairMetric(id_key="id", caption_key="text", **cfg["eval"]["metric"])


def validation_records(cfg: dict, run_dir: Path) -> list[dict]:
    """What the gate scores every round on: `gate.source`, else the toy world's val split, held out from the
    training scenes and from the eval scenes."""
    if cfg["gate"].get("source") is not None:
        records = read_records(write_source(cfg, cfg["gate"]["source"], run_dir / "validation" / "source"))
        test = {r["id"] for r in read_records(rounds.round_dirs(cfg, run_dir)[0] / "eval" / "source" / "prompts.jsonl")}
        shared = test & {r["id"] for r in records}
        if shared:
            raise ValueError(f"gate.source shares records with eval.source (e.g. {sorted(shared)[0]!r}): the gate "
                             f"would choose on test data")
        return records
    from halign.data_gen import toy_world
    from halign.recipes.round_gate import toy_validation_prompts

    ev = cfg["eval"]["source"]
    world = toy_world.ToyWorldConfig(**{"seed": cfg["seed"], **(ev["world"] or {})})
    test = read_records(rounds.round_dirs(cfg, run_dir)[0] / "eval" / "source" / "prompts.jsonl")
    return toy_validation_prompts(world, cfg["gate"].get("val_scenes", 200), run_dir / "validation" / "source",
                                  seen_scenes(cfg), test)


def run_recipe(recipe: str | Path, overrides: list[str] | None = None, out: str | Path | None = None,
               dry_run: bool = False, progress: bool = True, log=print) -> dict:
    """Python API of `halign run`; returns {"run_dir", "plan", "notes", "config", "ran": [stage folders run],
    "policy": the last round's trained checkpoint, "report": its eval report (None without eval)}."""
    cfg = recipe_config.resolve(recipe_config.apply_overrides(recipe_config.load_recipe(recipe), overrides or []))
    run_dir = Path(out) if out else Path("halign_runs") / Path(recipe).stem
    plan, notes = make_plan(cfg, run_dir), recipe_config.notes(cfg)
    last = rounds.round_dirs(cfg, run_dir)[-1]
    result = {"run_dir": str(run_dir), "plan": plan, "notes": notes, "config": cfg, "ran": [],
              "policy": str(rounds.policy_path(cfg, last)),
              "report": None if cfg["eval"] is None else str(last / "eval" / "report_after.json")}
    if dry_run:
        log(render_plan(cfg, plan, notes, run_dir))
        return result
    if notes:
        raise ValueError("cannot execute this recipe: " + "; ".join(notes))
    ensure_writable_dir(run_dir)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(_public(cfg), sort_keys=False))
    started = time.time()
    todo = [p for p in plan if p["action"] == "run"]
    base = model_path(cfg) if todo else cfg["model"]
    dirs = rounds.round_dirs(cfg, run_dir)
    for step in plan:
        if step["action"] == "skip":
            log(f"[{step['folder']}] skipped: unchanged (key {step['key'][:12]})")
            continue
        log(f"[{step['folder']}] running ({step['reason']})")
        folder = run_dir / step["folder"]
        # A stale key must not survive a crash halfway through the stage.
        (folder / "stage_key.json").unlink(missing_ok=True)
        t0 = time.time()
        r = step["round"]
        ckpt = base if r == 1 else str(rounds.policy_path(cfg, dirs[r - 2]))
        run_stage(step["stage"], cfg, r, run_dir, ckpt, progress)
        write_json(folder / "stage_key.json", {"stage": step["stage"], "key": step["key"], "config": step["config"],
                                               "seconds": round(time.time() - t0, 2)})
        result["ran"].append(step["folder"])
    with (run_dir / "runs.jsonl").open("a") as fh:
        fh.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "overrides": overrides or [],
                             "ran": result["ran"], "skipped": [p["folder"] for p in plan if p["action"] == "skip"],
                             "seconds": round(time.time() - started, 2)}) + "\n")
    if cfg["rounds"] > 1 and (result["ran"] or not (run_dir / "rounds.json").exists()):
        validation = None
        if cfg["gate"] is not None:  # score every round on validation records; the gate keeps the best
            records = validation_records(cfg, run_dir)
            validation = rounds.validate(cfg, run_dir, model_path(cfg), records, eval_metric(cfg), progress)
        summary = rounds.summarize(cfg, run_dir, validation)
        if "gate" in summary:
            log(f"gate: {summary['gate']['reason']}; kept policy {summary['kept_policy']}")
            result |= {"kept_policy": summary["kept_policy"], "kept_report": summary["kept_report"]}
    compare_md = dirs[-1] / "eval" / "compare" / "compare.md"
    if compare_md.exists() and plan[-1]["action"] == "run" and plan[-1]["stage"] == "eval":
        log(compare_md.read_text())  # the last round against the base model
    if result["ran"] or not (run_dir / "report.html").exists():
        from halign.recipes.html_runs import write_run_html

        write_run_html(cfg, run_dir)  # RUN/report.html: the base model against each round, per item
    return result


def _public(cfg: dict) -> dict:
    """The resolved config as a recipe would state it (train.dpo / train.peft with halign's defaults applied)."""
    out = {k: v for k, v in cfg.items() if k != "train_resolved"}
    out["train"] = {**cfg["train"], **cfg["train_resolved"]}
    return out


def render_plan(cfg: dict, plan: list[dict], notes: list[str], run_dir: Path) -> str:
    lines = [f"run folder: {run_dir}", "resolved config:",
             yaml.safe_dump(_public(cfg), sort_keys=False).rstrip(), "", "plan:"]
    lines += rounds.render(cfg, plan)
    if cfg["train"]["accelerate_config"]:
        config_json = rounds.round_dirs(cfg, run_dir)[0] / "train_config.json"
        lines.append("  train launches: " + " ".join(launch_command(cfg, config_json)))
    if notes:
        lines += ["", "execution would refuse (dry-run only reports these):"] + [f"  - {n}" for n in notes]
    return "\n".join(lines)


def _flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--dry-run", action="store_true", help="print the plan and validate; load no model")
    parser.add_argument("--out", default=None, help="run folder (default: halign_runs/RECIPE_NAME)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="recipe YAML (a path, or the name of a shipped recipe)")
    # REMAINDER, re-parsed in main(): flags may come after the overrides (`run r.yaml k=v --dry-run`).
    parser.add_argument("overrides", nargs=argparse.REMAINDER, help="section.key=value overrides (YAML values)")
    _flags(parser)


def main(args: argparse.Namespace) -> int:
    late, overrides = _flags(argparse.ArgumentParser(add_help=False)).parse_known_args(args.overrides)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        raise ValueError(f"unknown option {bad[0]}")
    run_recipe(args.recipe, overrides, late.out or args.out, args.dry_run or late.dry_run,
               progress=not (args.no_progress or late.no_progress))
    return 0


if __name__ == "__main__":  # one training process under `accelerate launch` (see launch_command)
    from halign.align.dpo import TrainConfig, train

    train(TrainConfig(**json.loads(Path(sys.argv[1]).read_text())))
