"""`halign gen-pairs`: sample + judge + pairs in one go, with the stages' own functions and folder layout.

    halign gen-pairs --model CKPT --source '{"type": "toy", "n": 200}' --out run --k 8 \
        --judge claims --judge-option splitter=objects --judge-option verifier=image --judge-option labeler=self

OUT/source/prompts.jsonl (only with --source), OUT/sample/{candidates,prompts}.jsonl, OUT/judge/judgments.jsonl,
OUT/pairs/dataset: each with its manifest, exactly as the separate commands write them, so any stage can be
re-run on its own afterwards. The policy is loaded once; `labeler=self` (the claims judge's image labeler,
at any depth of the judge options) reuses it in memory: self-feedback without a second copy of the model.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from halign.data_gen import pairs as pairs_stage
from halign.data_gen import sample as sample_stage
from halign.data_gen.io import ensure_writable_dir, write_jsonl, write_manifest
from halign.data_gen.sources import load_source
from halign.rewards.judges.options import parse_option


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


def run(sample_cfg: sample_stage.SampleConfig, out_dir: str | Path, prompts: str | Path | None = None,
        source: dict | None = None, judge: str = "grounding", judge_options: dict | None = None,
        pairs_cfg: pairs_stage.PairsConfig | None = None, model=None, processor=None,
        progress: bool = True) -> Path:
    """Run the three stages under out_dir; returns the pairs dataset folder."""
    from halign.align.model import load_policy
    from halign.rewards.judges.cli import run_judge

    if (prompts is None) == (source is None):
        raise ValueError("give exactly one of prompts (a prompts file) or source (a source spec)")
    started = time.time()
    out_dir = ensure_writable_dir(out_dir)
    pairs_cfg = pairs_cfg or pairs_stage.PairsConfig()
    stage_seconds: dict[str, float] = {}
    skipped: list[dict] = []

    t0 = time.time()
    if source is not None:
        source = dict(source)
        if source.get("type") == "toy":
            source.setdefault("out", str(out_dir / "source"))
        records, skipped = load_source(source)
        if not records:
            raise ValueError(f"source {source} gave no usable prompt ({len(skipped)} skipped)")
        prompts = write_jsonl(out_dir / "source" / "prompts.jsonl", records)
        write_manifest(out_dir / "source", "source", source, started=t0,
                       extra={"records": len(records), "skipped": skipped})
        if skipped:
            print(f"gen-pairs: source skipped {len(skipped)} record(s); first: {skipped[0]['id']}: "
                  f"{skipped[0]['reason']}")
    stage_seconds["source"] = round(time.time() - t0, 2)

    t0 = time.time()
    if model is None:
        model, processor = load_policy(sample_cfg.model, sample_cfg.dtype, sample_cfg.device)
    candidates = sample_stage.run(sample_cfg, prompts, out_dir / "sample", model=model, processor=processor,
                                  progress=progress)
    stage_seconds["sample"] = round(time.time() - t0, 2)

    t0 = time.time()
    options = resolve_self_labeler(dict(judge_options or {}), str(sample_cfg.model), model, processor)
    judgments, _, judge_extra = run_judge(judge, candidates, out_dir / "judge" / "judgments.jsonl",
                                          out_dir / "sample" / "prompts.jsonl", options, progress=progress)
    stage_seconds["judge"] = round(time.time() - t0, 2)

    t0 = time.time()
    dataset = pairs_stage.run(pairs_cfg, judgments, candidates, out_dir / "sample" / "prompts.jsonl",
                              out_dir / "pairs")
    stage_seconds["pairs"] = round(time.time() - t0, 2)
    summary = json.loads((out_dir / "pairs" / "summary.json").read_text())

    config = {"sample": asdict(sample_cfg), "source": source, "judge": judge,
              "judge_options": _printable(judge_options or {}), "pairs": asdict(pairs_cfg)}
    write_manifest(out_dir, "gen-pairs", config, {"prompts": prompts}, started, extra={
        "stage_seconds": stage_seconds, "source_skipped": len(skipped), "judge_counts": judge_extra["counts"],
        "pairs": summary["pairs"], "outputs": {"candidates": str(candidates), "judgments": str(judgments),
                                               "dataset": str(dataset)}})
    return dataset


def _printable(options):
    """Judge options as they can go into a manifest (in-memory models are named, not dumped)."""
    if isinstance(options, dict):
        return {k: _printable(v) for k, v in options.items()}
    if isinstance(options, list):
        return [_printable(v) for v in options]
    return options if isinstance(options, (str, int, float, bool, type(None))) else type(options).__name__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="policy checkpoint (sampled, and the labeler when labeler=self)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--prompts", help="prompt records (JSONL or JSON list)")
    where.add_argument("--source", help='a source spec: JSON such as \'{"type": "toy", "n": 200}\' or TYPE:PATH '
                                        "(jsonl, json, hf, video); see halign.data_gen.sources")
    parser.add_argument("--out", required=True, help="run folder: source/, sample/, judge/, pairs/ go inside")
    sampling = parser.add_argument_group("sampling (as halign sample)")
    for name in ("k", "temperature", "top_p", "max_new_tokens", "batch_size", "seed", "dtype", "device"):
        default = sample_stage.SampleConfig.__dataclass_fields__[name].default
        sampling.add_argument("--" + name.replace("_", "-"), type=type(default) if default is not None else str,
                              default=default)
    sampling.add_argument("--no-dedupe", action="store_true", help="keep identical candidates of a prompt")
    judging = parser.add_argument_group("judging (as halign judge)")
    judging.add_argument("--judge", default="grounding", help="built-in judge name or dotted path")
    judging.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                         help="a judge constructor option, repeatable; VALUE is read as JSON when it parses "
                              "(e.g. vocabulary=toy, splitter=objects, labeler=self, judges='[\"grounding\", ...]')")
    pairing = parser.add_argument_group("pairs (as halign pairs)")
    pairing.add_argument("--strategy", choices=pairs_stage.STRATEGIES, default="gap")
    pairing.add_argument("--min-gap", type=float, default=1.0)
    pairing.add_argument("--sample-num", type=int, default=2)
    pairing.add_argument("--no-keep-coverage", action="store_true")
    pairing.add_argument("--min-length-ratio", type=float, default=None)
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    sample_cfg = sample_stage.SampleConfig(
        model=args.model, k=args.k, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, dedupe=not args.no_dedupe,
        dtype=args.dtype, device=args.device)
    pairs_cfg = pairs_stage.PairsConfig(strategy=args.strategy, min_gap=args.min_gap, sample_num=args.sample_num,
                                        keep_coverage=not args.no_keep_coverage,
                                        min_length_ratio=args.min_length_ratio, seed=args.seed)
    options = dict(parse_option(o) for o in args.judge_option)
    dataset = run(sample_cfg, args.out, prompts=args.prompts, source=parse_source(args.source) if args.source else None,
                  judge=args.judge, judge_options=options, pairs_cfg=pairs_cfg, progress=not args.no_progress)
    print(dataset)
    return 0
