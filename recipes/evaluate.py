"""`halign eval`: generate with a checkpoint (greedy), then score a hallucination benchmark.

Generation is data_gen's sampler with temperature 0; scoring is a `Metric` from rewards/. The report
has the schema every later tool reads: `model`, `benchmark`, `n`, `metrics`, `per_item`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from halign.data_gen.io import read_records, write_json
from halign.data_gen.sample import generate_texts


def evaluate(model, processor, prompts: list[dict], metric, model_name: str, max_new_tokens: int = 64,
             batch_size: int = 64, progress: bool = True, desc: str = "evaluating") -> dict:
    started = time.time()
    texts = generate_texts(model, processor, prompts, k=1, temperature=0.0, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, desc=desc, progress=progress)
    responses = [{"id": p["id"], "text": t[0]} for p, t in zip(prompts, texts)]
    scored = metric.score(responses, {p["id"]: p for p in prompts})
    return {
        "model": model_name,
        "benchmark": scored["benchmark"],
        "n": scored["metrics"]["n"],
        "metrics": scored["metrics"],
        "settings": {"decoding": "greedy", "max_new_tokens": max_new_tokens, **scored.get("settings", {})},
        "missing_ids": scored.get("missing_ids", []),
        "per_item": scored["per_item"],
        "wall_seconds": round(time.time() - started, 2),
    }


def toy_metric():
    from halign.data_gen.toy_world import ToyWorldConfig
    from halign.rewards.object_hallucination import ObjectHallucinationMetric

    return ObjectHallucinationMetric(ToyWorldConfig().vocabulary())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or a LoRA adapter folder)")
    parser.add_argument("--bench", choices=["toy"], default="toy")
    parser.add_argument("--prompts", help="prompt records with ground-truth `objects` (default: toy world eval split)")
    parser.add_argument("--n", type=int, default=300, help="toy world: number of held-out scenes")
    parser.add_argument("--out", required=True, help="report JSON path")
    parser.add_argument("--max-new-tokens", type=int, default=64)


def main(args: argparse.Namespace) -> int:
    from halign.align.model import load_policy
    from halign.data_gen import toy_world

    out = Path(args.out)
    if args.prompts:
        prompts = read_records(args.prompts)
    else:
        prompts = toy_world.write_prompts(toy_world.ToyWorldConfig(), "eval", args.n, out.parent / "toy_eval")
    model, processor = load_policy(args.model)
    report = evaluate(model, processor, prompts, toy_metric(), args.model, args.max_new_tokens)
    write_json(out, report)
    m = report["metrics"]
    print(f"{args.bench}: n={m['n']} CHAIR_s={m['chair_s']:.3f} CHAIR_i={m['chair_i']:.3f} "
          f"recall={m['recall']:.3f} len={m['mean_len']:.1f} -> {out}")
    return 0
