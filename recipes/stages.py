"""The engine's stage table: what one round of a recipe runs, in order, and the function that runs each stage.

Each `Stage` names the config section whose resolved value keys it (recipes/runner.py hashes it with the
upstream stage's key), the files it reads (relative to its round folder), the files a finished run of it
leaves in its folder, whether a recipe runs it, and its function. Every function calls the stage's own
library code (the same path as its CLI) and writes into `ROUND/<stage>/`.

After the rounds, recipes/rounds.py scores validation records, applies the gate and, with `eval.rounds:
kept`, scores the eval (test) records for the model before alignment and the kept round only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from halign.data_gen.io import ensure_writable_dir, read_records, stable_hash, write_json, write_jsonl, write_manifest
from halign.recipes import inputs, rounds


@dataclass
class Context:
    """One execution of a recipe: its resolved config, its run folder, and the policy the sample stage keeps
    in memory for a judge that labels with it (`labeler: self`), so it is loaded once."""
    cfg: dict
    run_dir: Path
    progress: bool = True
    log: Callable = print
    loaded: dict = field(default_factory=dict)  # checkpoint path -> (model, processor)

    def round_dir(self, r: int) -> Path:
        return rounds.round_dirs(self.cfg, self.run_dir)[r - 1]


@dataclass(frozen=True)
class Stage:
    name: str
    section: str  # the config section that keys it
    inputs: tuple[str, ...]  # files it reads, relative to the round folder
    outputs: tuple[str, ...]  # files it leaves in its folder (more may depend on the config: `outputs`)
    run: Callable  # run(ctx, r, ckpt): round r (1-based), starting from checkpoint ckpt
    runs_when: Callable[[dict], bool]  # whether a recipe (its resolved config) runs the stage


def _always(cfg: dict) -> bool:
    return True


# --- sample ----------------------------------------------------------------------------------------

def uses_self_labeler(options) -> bool:
    """Whether a judge's options (at any depth) ask for labeler=self: the policy labels the images."""
    if isinstance(options, list):
        return any(uses_self_labeler(o) for o in options)
    return isinstance(options, dict) and (options.get("labeler") == "self"
                                          or any(uses_self_labeler(v) for v in options.values()))


def resolve_self_labeler(options, model_path: str, model, processor):
    """Replace labeler="self" (anywhere in the options) by the policy already loaded in memory."""
    if isinstance(options, list):
        return [resolve_self_labeler(o, model_path, model, processor) for o in options]
    if not isinstance(options, dict):
        return options
    out = {k: resolve_self_labeler(v, model_path, model, processor) for k, v in options.items()}
    if out.get("labeler") == "self":
        out.update(labeler=model_path, labeler_model=model, labeler_processor=processor)
    return out


def run_sample(ctx: Context, r: int, ckpt: str) -> None:
    from halign.align.model import load_policy
    from halign.data_gen.sample import SampleConfig, run

    cfg, round_dir = rounds.round_config(ctx.cfg, r), ctx.round_dir(r)
    started = time.time()
    prompts = inputs.write_source(cfg, cfg["source"], round_dir / "source")
    write_manifest(round_dir / "source", "source", cfg["source"], started=started,
                   extra={"records": len(read_records(prompts))})
    sample_cfg = SampleConfig(model=ckpt, **cfg["sample"])
    model = processor = None
    if uses_self_labeler(cfg["judge"]):  # the judge labels with this policy: load it once, keep it
        model, processor = ctx.loaded.setdefault(ckpt, load_policy(ckpt, sample_cfg.dtype, sample_cfg.device))
    run(sample_cfg, prompts, round_dir / "sample", model=model, processor=processor, progress=ctx.progress)


# --- judge and omission negatives --------------------------------------------------------------------

def judge_options(ctx: Context, cfg: dict, ckpt: str) -> dict:
    options = {k: v for k, v in cfg["judge"].items() if k != "name"}
    if uses_self_labeler(options):
        from halign.align.model import load_policy

        if ckpt not in ctx.loaded:  # the sample stage was skipped (unchanged): load the policy now
            ctx.loaded[ckpt] = load_policy(ckpt, cfg["sample"]["dtype"], cfg["sample"]["device"])
        options = resolve_self_labeler(options, ckpt, *ctx.loaded[ckpt])
    return options


def run_judge_stage(ctx: Context, r: int, ckpt: str) -> None:
    from halign.rewards.judges.cli import run_judge

    cfg, round_dir = rounds.round_config(ctx.cfg, r), ctx.round_dir(r)
    run_judge(cfg["judge"]["name"], round_dir / "sample" / "candidates.jsonl", round_dir / "judge" / "judgments.jsonl",
              round_dir / "sample" / "prompts.jsonl", judge_options(ctx, cfg, ckpt), progress=ctx.progress)


def run_omissions(ctx: Context, r: int, ckpt: str) -> None:
    """Judge omission copies of the round's clean answers (data_gen/omissions.py); all_candidates.jsonl and
    all_judgments.jsonl hold the sampled ones and the copies, for the pairs stage."""
    from halign.data_gen.omissions import omission_candidates
    from halign.rewards.judges.cli import run_judge

    cfg, round_dir = rounds.round_config(ctx.cfg, r), ctx.round_dir(r)
    folder = ensure_writable_dir(round_dir / "omissions")
    sampled = read_records(round_dir / "sample" / "candidates.jsonl")
    judged = read_records(round_dir / "judge" / "judgments.jsonl")
    copies = omission_candidates(sampled, judged)
    extra = []
    if copies:
        write_jsonl(folder / "candidates.jsonl", copies)
        shutil.copy(round_dir / "sample" / "prompts.jsonl", folder / "prompts.jsonl")  # the judge reads it there
        judgments, _, _ = run_judge(cfg["judge"]["name"], folder / "candidates.jsonl", folder / "judgments.jsonl",
                                    options=judge_options(ctx, cfg, ckpt), progress=ctx.progress)
        copies, extra = read_records(folder / "candidates.jsonl"), read_records(judgments)
    write_jsonl(folder / "all_candidates.jsonl", sampled + copies)
    write_jsonl(folder / "all_judgments.jsonl", judged + extra)


# --- pairs -----------------------------------------------------------------------------------------

def pairs_inputs(cfg: dict, round_dir: Path) -> tuple[Path, Path]:
    """(judgments, candidates) the pairs stage reads: with omission negatives, the files that add them."""
    if cfg["omission_negatives"]:
        return round_dir / "omissions" / "all_judgments.jsonl", round_dir / "omissions" / "all_candidates.jsonl"
    return round_dir / "judge" / "judgments.jsonl", round_dir / "sample" / "candidates.jsonl"


def run_pairs(ctx: Context, r: int, ckpt: str) -> None:
    from halign.data_gen.pairs import PairsConfig, run

    cfg, round_dir = rounds.round_config(ctx.cfg, r), ctx.round_dir(r)
    judgments, candidates = pairs_inputs(cfg, round_dir)
    run(PairsConfig(**cfg["pairs"]), judgments, candidates, round_dir / "sample" / "prompts.jsonl",
        round_dir / "pairs")


# --- train -----------------------------------------------------------------------------------------

def train_config(cfg: dict, round_dir: Path, ckpt: str) -> dict:
    t = cfg["train"]
    return {"model": ckpt, "pairs": str(round_dir / "pairs" / "dataset"), "output_dir": str(round_dir / "train"),
            "dpo": t["dpo"], "peft": t["peft"], "dtype": t["dtype"], "mdpo": t["mdpo"],
            "quantization": t["quantization"], "fast": t.get("fast", True), "row_tokens": t.get("row_tokens")}


def launch(cfg: dict, config_json: Path) -> tuple[list[str], dict]:
    """(argv, extra environment) that runs this training under train.accelerate_config, as
    `halign train --accelerate-config NAME` would (align/launch.py)."""
    from halign.align.launch import launch_command

    t = cfg["train"]
    return launch_command(t["accelerate_config"], t.get("num_processes"), ["--config", str(config_json)])


def run_train(ctx: Context, r: int, ckpt: str) -> None:
    import os

    from halign.align.dpo import TrainConfig, train

    cfg, round_dir = rounds.round_config(ctx.cfg, r), ctx.round_dir(r)
    tc = train_config(cfg, round_dir, ckpt)
    if cfg["train"]["accelerate_config"]:
        argv, env = launch(cfg, write_json(round_dir / "train_config.json", tc))
        subprocess.run(argv, env={**os.environ, **env}, check=True)
    else:
        train(TrainConfig(**tc), progress=ctx.progress)
    if rounds.merges(ctx.cfg):  # the next round (or the kept round's scoring) loads it as a plain checkpoint
        rounds.merge_policy(ctx.cfg, round_dir)


# --- eval ------------------------------------------------------------------------------------------

def eval_metric(cfg: dict):
    """The eval section's metric, built by the metric registry (rewards/metrics.py) with its options."""
    from halign.rewards.metrics import metric_spec

    return metric_spec(cfg["eval"]["benchmark"]).build(**cfg["eval"]["metric"])


def eval_stage_config(cfg: dict) -> dict | None:
    """What an eval's key hashes: the eval section with its source's identity."""
    ev = cfg["eval"]
    if ev is None:
        return None
    ev = {**ev, "source": inputs.source_identity(ev["source"])}
    if cfg["rounds"] > 1 and ev["source"]["type"] == "toy_world" and ev["source"]["exclude_seen"]:
        ev["held_out_rounds"] = cfg["rounds"]  # more rounds hold out more scenes: a different eval set
    return ev


def score_kwargs(cfg: dict) -> dict:
    return {"max_new_tokens": cfg["eval"]["max_new_tokens"], "batch_size": cfg["eval"]["batch_size"]}


def _write_reports(folder: Path, side: str, captions: dict, pope: dict | None) -> None:
    from halign.recipes.scoring import yes_no_name

    write_json(ensure_writable_dir(folder) / f"report_{side}.json", captions)
    if pope is not None:  # pope_<side>.json for toy scenes, qa_<side>.json for toy clips' questions
        write_json(folder / f"{yes_no_name(pope)}_{side}.json", pope)


def score_before(ctx: Context, records: list[dict], base: str) -> None:
    """The base model's eval reports, in round 1's eval folder. They depend on the base model and the eval
    settings only: a judge or training change reruns an eval but reuses them."""
    from halign.recipes.scoring import score_policy

    folder = ctx.round_dir(1) / "eval"
    key = stable_hash({"model": inputs.model_identity(ctx.cfg), "eval": eval_stage_config(ctx.cfg)})
    if read_key(folder / "before") == key and (folder / "report_before.json").exists():
        return
    captions, pope = score_policy(base, records, eval_metric(ctx.cfg), "before", ctx.progress,
                                  **score_kwargs(ctx.cfg))
    _write_reports(folder, "before", captions, pope)
    write_json(folder / "before" / "stage_key.json", {"key": key})


def score_round(ctx: Context, r: int, records: list[dict]) -> None:
    """Round r's policy on the eval records (`report_after.json`), compared with the base model's."""
    from halign.recipes.compare import run_compare
    from halign.recipes.scoring import score_policy

    folder, ev = ctx.round_dir(r) / "eval", ctx.cfg["eval"]
    policy = str(rounds.policy_path(ctx.cfg, ctx.round_dir(r)))
    label = "after" if not rounds.per_round_folders(ctx.cfg) else f"round {r}"
    captions, pope = score_policy(policy, records, eval_metric(ctx.cfg), label, ctx.progress, **score_kwargs(ctx.cfg))
    _write_reports(folder, "after", captions, pope)
    if ev["before"]:
        run_compare([ctx.round_dir(1) / "eval" / "report_before.json", folder / "report_after.json"],
                    folder / "compare")


def run_eval(ctx: Context, r: int, ckpt: str) -> None:
    """eval.rounds: every: round r's policy on the eval set; with eval.before, the base model too (round 1,
    where ckpt is the recipe's model)."""
    records = inputs.eval_records(ctx.cfg, ctx.round_dir(r) / "eval")
    if ctx.cfg["eval"]["before"] and r == 1:
        score_before(ctx, records, ckpt)
    score_round(ctx, r, records)


def read_key(folder: Path) -> str | None:
    import json

    try:
        return json.loads((folder / "stage_key.json").read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None



STAGES: tuple[Stage, ...] = (
    Stage("sample", "sample", ("source/prompts.jsonl",), ("candidates.jsonl", "prompts.jsonl"), run_sample, _always),
    Stage("judge", "judge", ("sample/candidates.jsonl", "sample/prompts.jsonl"), ("judgments.jsonl",),
          run_judge_stage, _always),
    Stage("omissions", "omission_negatives", ("sample/candidates.jsonl", "judge/judgments.jsonl"),
          ("all_candidates.jsonl", "all_judgments.jsonl"), run_omissions, lambda cfg: cfg["omission_negatives"]),
    Stage("pairs", "pairs", ("judge/judgments.jsonl or omissions/all_judgments.jsonl", "sample/prompts.jsonl"),
          ("dataset/dataset_info.json", "summary.json"), run_pairs, _always),
    Stage("train", "train", ("pairs/dataset",), ("manifest.json",), run_train, lambda cfg: cfg["train"] is not None),
    Stage("eval", "eval", ("train (the round's policy)",), ("report_after.json",), run_eval,
          lambda cfg: cfg["eval"] is not None and cfg["eval"]["rounds"] == "every"),
)


def stage(name: str) -> Stage:
    return next(s for s in STAGES if s.name == name)


def outputs(name: str, cfg: dict, r: int) -> list[str]:
    """Files a finished stage of round r leaves in its folder: one missing reruns the stage."""
    out = list(stage(name).outputs)
    if name == "train" and rounds.merges(cfg):
        out.append("merged/config.json")
    if name == "eval" and cfg["eval"]["before"] and r == 1:  # round 1 also holds the base model's report
        out.append("report_before.json")
    return out
