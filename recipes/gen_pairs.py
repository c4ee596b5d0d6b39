"""`halign gen-pairs`: sample + judge + pairs in one go, a thin alias of the engine (recipes/runner.py).

    halign gen-pairs --model CKPT --source '{"type": "toy", "n": 200}' --out run --k 8 \
        --judge claims --judge-option splitter=objects --judge-option verifier=image --judge-option labeler=self

The flags become a one-round recipe with `train: null` and `eval: null` (`gen_pairs_recipe`), so the run
folder is the engine's flat layout: OUT/source/prompts.jsonl, OUT/sample/{candidates,prompts}.jsonl,
OUT/judge/judgments.jsonl, OUT/pairs/dataset, each with its manifest and stage key, plus OUT/manifest.json
for the whole command. A rerun skips the stages whose inputs are unchanged. `labeler=self` (the claims
judge's image labeler, at any depth of the judge options) reuses the policy the sample stage loaded:
self-feedback without a second copy of the model.

`--source` specs are data_gen/sources.py's; a `jsonl` spec is read by load_source (normalized, unusable
records skipped) as its `json` type, while `--prompts FILE` passes prompt records through as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from halign.data_gen import pairs as pairs_stage
from halign.data_gen import sample as sample_stage
from halign.data_gen.fields import add_flags
from halign.data_gen.io import read_records, write_manifest
from halign.data_gen.overrides import parse_option
from halign.recipes.stages import resolve_self_labeler  # noqa: F401  (part of this module's API)


# Flags derived from the stage configs (data_gen/fields.py add_flags); --seed seeds sampling and pairing both.
SAMPLE_FLAGS = ["k", "temperature", "top_p", "max_new_tokens", "batch_size", "seed", "dtype", "device", "dedupe"]
PAIRS_FLAGS = ["strategy", "min_gap", "sample_num", "keep_coverage", "min_length_ratio", "balance_lengths"]


def parse_source(text: str) -> dict:
    """A source spec from the command line: JSON ('{"type": "jsonl", "path": "x.jsonl"}') or TYPE:PATH."""
    text = text.strip()
    if text.startswith("{"):
        try:
            spec = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--source is not valid JSON ({err.msg})") from None
        return spec
    kind, sep, path = text.partition(":")
    if not sep or not path:
        raise ValueError(f"--source must be JSON or TYPE:PATH (e.g. jsonl:prompts.jsonl), got {text!r}")
    return {"type": kind, "path": path}


def gen_pairs_recipe(sample_cfg: sample_stage.SampleConfig, prompts: str | Path | None = None,
                     source: dict | None = None, judge: str = "grounding", judge_options: dict | None = None,
                     pairs_cfg: pairs_stage.PairsConfig | None = None) -> dict:
    """The recipe a gen-pairs command runs: one round, stopping after the pairs."""
    if (prompts is None) == (source is None):
        raise ValueError("give exactly one of prompts (a prompts file) or source (a source spec)")
    if prompts is not None:
        src = {"type": "jsonl", "path": str(prompts)}
    else:
        if not isinstance(source, dict) or "type" not in source:
            raise ValueError(f"a source spec is a dict with a 'type', got {source!r}")
        src = {**source, "type": "json"} if source["type"] == "jsonl" else dict(source)
    sample = {k: v for k, v in dataclasses.asdict(sample_cfg).items() if k != "model"}
    pairs_cfg = pairs_cfg or pairs_stage.PairsConfig()
    return {"model": str(sample_cfg.model), "seed": sample_cfg.seed, "rounds": 1, "source": src, "sample": sample,
            "judge": {"name": judge, **(judge_options or {})}, "pairs": dataclasses.asdict(pairs_cfg),
            "train": None, "eval": None}


def run(sample_cfg: sample_stage.SampleConfig, out_dir: str | Path, prompts: str | Path | None = None,
        source: dict | None = None, judge: str = "grounding", judge_options: dict | None = None,
        pairs_cfg: pairs_stage.PairsConfig | None = None, progress: bool = True, log=print) -> Path:
    """Run the three stages under out_dir through the engine; returns the pairs dataset folder."""
    from halign.recipes import config
    from halign.recipes.runner import run_config

    started = time.time()
    recipe = gen_pairs_recipe(sample_cfg, prompts, source, judge, judge_options, pairs_cfg)
    cfg = config.resolve(recipe)  # the sample stage reads the source before it loads the model
    result = run_config(cfg, out_dir, progress=progress, log=log if progress else (lambda *_: None))
    out_dir = Path(out_dir)
    skipped = out_dir / "source" / "skipped.json"
    skipped = json.loads(skipped.read_text()) if skipped.exists() else []
    if skipped:
        log(f"gen-pairs: source skipped {len(skipped)} record(s); first: {skipped[0]['id']}: {skipped[0]['reason']}")
    judge_manifest = json.loads((out_dir / "judge" / "manifest.json").read_text())
    stage_seconds = {}
    for stage in ("sample", "judge", "pairs"):
        key = out_dir / stage / "stage_key.json"
        stage_seconds[stage] = json.loads(key.read_text()).get("seconds") if key.exists() else None
    summary = json.loads((out_dir / "pairs" / "summary.json").read_text())
    config_out = {"sample": dataclasses.asdict(sample_cfg), "source": recipe["source"], "judge": judge,
                  "judge_options": judge_options or {}, "pairs": recipe["pairs"]}
    write_manifest(out_dir, "gen-pairs", config_out, {"prompts": out_dir / "sample" / "prompts.jsonl"}, started, extra={
        "stage_seconds": stage_seconds, "ran": result["ran"], "source_skipped": len(skipped),
        "records": len(read_records(out_dir / "sample" / "prompts.jsonl")),
        "judge_counts": judge_manifest.get("counts"), "pairs": summary["pairs"],
        "outputs": {"candidates": str(out_dir / "sample" / "candidates.jsonl"),
                    "judgments": str(out_dir / "judge" / "judgments.jsonl"), "dataset": str(out_dir / "pairs" / "dataset")}})
    return out_dir / "pairs" / "dataset"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="policy checkpoint (sampled, and the labeler when labeler=self)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--prompts", help="prompt records (JSONL or JSON list)")
    where.add_argument("--source", help='a source spec: JSON such as \'{"type": "toy", "n": 200}\' or TYPE:PATH '
                                        "(jsonl, json, hf, video); see halign.data_gen.sources")
    parser.add_argument("--out", required=True, help="run folder: source/, sample/, judge/, pairs/ go inside")
    sampling = parser.add_argument_group("sampling (as halign sample; types, defaults and help from SampleConfig)")
    add_flags(sampling, sample_stage.SampleConfig, SAMPLE_FLAGS)
    judging = parser.add_argument_group("judging (as halign judge)")
    judging.add_argument("--judge", default="grounding", help="built-in judge name or dotted path")
    judging.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                         help="a judge constructor option, repeatable; VALUE is YAML, as every override "
                              "(e.g. vocabulary=toy, splitter=objects, labeler=self, judges='[\"grounding\", ...]')")
    pairing = parser.add_argument_group("pairs (as halign pairs; types, defaults and help from PairsConfig)")
    add_flags(pairing, pairs_stage.PairsConfig, PAIRS_FLAGS)
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    sample_cfg = sample_stage.SampleConfig(model=args.model, **{name: getattr(args, name) for name in SAMPLE_FLAGS})
    pairs_cfg = pairs_stage.PairsConfig(**{name: getattr(args, name) for name in PAIRS_FLAGS}, seed=args.seed)
    options = dict(parse_option(o) for o in args.judge_option)
    dataset = run(sample_cfg, args.out, prompts=args.prompts, source=parse_source(args.source) if args.source else None,
                  judge=args.judge, judge_options=options, pairs_cfg=pairs_cfg, progress=not args.no_progress)
    print(dataset)
    return 0
