"""`halign eval`: generate with a checkpoint (greedy), then score a hallucination benchmark.

Benchmarks are the registry's (rewards/metrics.py) that can generate their own answers: `toy` (describe each
held-out toy scene; CHAIR-style object hallucination against the exact ground truth), `pope` (answer every
yes/no existence question of each held-out toy scene; POPE metrics per kind), `chair` and `amber` (on your
prompt records and ground truth).

Generation is data_gen's sampler with temperature 0; scoring is a `Metric` from rewards/. The report
has the schema every later tool reads: `model`, `benchmark`, `item_kind` (the registry's per-item record
kind), `n`, `metrics`, `per_item`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from halign.data_gen.io import read_records, write_json
from halign.data_gen.sample import generate_texts
from halign.rewards.metrics import describe_report, eval_benches, metric_spec, spec_for_benchmark


def evaluate(model, processor, prompts: list[dict], metric, model_name: str, max_new_tokens: int = 64,
             batch_size: int = 64, progress: bool = True, desc: str = "evaluating") -> dict:
    started = time.time()
    texts = generate_texts(model, processor, prompts, k=1, temperature=0.0, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, desc=desc, progress=progress)
    responses = [{"id": p["id"], "text": t[0]} for p, t in zip(prompts, texts)]
    scored = metric.score(responses, {p["id"]: p for p in prompts})
    by_id = {str(p["id"]): p for p in prompts}
    for item in scored["per_item"]:  # what the HTML report shows next to each answer
        prompt = by_id.get(str(item.get("id")), {})
        item.setdefault("image", (prompt.get("images") or [None])[0])
        item.setdefault("question", prompt.get("question"))
    return describe_report({
        "model": model_name,
        "benchmark": scored["benchmark"],
        "n": scored["metrics"].get("n", scored.get("n")),
        "metrics": scored["metrics"],
        "settings": {"decoding": "greedy", "max_new_tokens": max_new_tokens, **scored.get("settings", {})},
        "missing_ids": scored.get("missing_ids", []),
        "per_item": scored["per_item"],
        **({"kinds": scored["kinds"]} if "kinds" in scored else {}),  # POPE: the per-kind table
        "wall_seconds": round(time.time() - started, 2),
    })


def toy_metric():
    return metric_spec("toy").build()


def pope_metric():
    return metric_spec("toy_pope").build()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or a LoRA adapter folder)")
    parser.add_argument("--bench", choices=sorted(eval_benches()), default="toy",
                        help="; ".join(f"{bench}: {spec.description}" for bench, spec in sorted(eval_benches().items())))
    parser.add_argument("--gt", action="append", help="chair: ground truth (object-set JSON or COCO annotation "
                                                      "files), repeatable")
    parser.add_argument("--synonyms", default="lisaanne", help="chair: synonym list (name or file)")
    parser.add_argument("--lemmatizer", default="singularize", choices=["singularize", "pos"])
    parser.add_argument("--amber-dir", help="amber: folder with annotations.json, relation.json, safe_words.txt")
    parser.add_argument("--prompts", help="prompt records with ground-truth `objects` (toy) or `pope` questions "
                                          "(pope) (default: toy world eval split)")
    parser.add_argument("--n", type=int, default=300, help="toy world: number of held-out scenes")
    parser.add_argument("--out", required=True, help="report JSON path")
    parser.add_argument("--max-new-tokens", type=int, default=64)


def build_metric(args: argparse.Namespace, prompts: list[dict]):
    """The metric of `--bench`, with what that benchmark needs from the command line; fills in the CHAIR
    ground truth of the prompts."""
    spec = eval_benches()[args.bench]
    if spec.name == "chair":
        from halign.rewards.chair import load_chair_gt, lookup_gt

        if not args.gt:
            raise ValueError("--bench chair needs --gt (object-set JSON or COCO annotation files)")
        metric = spec.build(lemmatizer=args.lemmatizer, synonyms=args.synonyms)
        gt = load_chair_gt(args.gt, metric.vocab)
        for p in prompts:  # records the ground truth lacks are listed as missing_ids, not dropped
            found = lookup_gt(gt, p["id"])
            if found is not None:
                p["objects"] = sorted(found)
        return metric
    if spec.name == "amber":
        from halign.rewards.amber import AmberData
        from halign.rewards.benchmark_data import data_dir

        return spec.build(data=AmberData.from_dir(args.amber_dir or data_dir() / "amber"))
    return spec.build()


def summary_line(report: dict) -> str:
    """The report's summary metrics (those its registry entry declares), in the entry's order."""
    m = report["metrics"]
    spec = spec_for_benchmark(report["benchmark"])
    names = [k for k in spec.summary if k in m] if spec else [k for k, v in m.items() if isinstance(v, float)]
    line = f"n={report['n']} " + " ".join(f"{k}={m[k]:.3f}" for k in names if isinstance(m[k], (int, float)))
    if report.get("kinds"):  # POPE: the per-kind table
        line += " (" + " ".join(f"{k}:acc={r['accuracy']:.3f}/f1={r['f1']:.3f}" for k, r in report["kinds"].items()) + ")"
    return line


def main(args: argparse.Namespace) -> int:
    from halign.align.model import load_policy
    from halign.data_gen import toy_world

    out = Path(args.out)
    if args.prompts:
        prompts = read_records(args.prompts)
    else:
        prompts = toy_world.write_prompts(toy_world.ToyWorldConfig(), "eval", args.n, out.parent / "toy_eval")
    if eval_benches()[args.bench].name == "toy_pope":
        from halign.rewards.toy_pope import pope_prompts

        prompts = pope_prompts(prompts)  # one prompt per question, same image
    if args.bench in ("chair", "amber") and not args.prompts:
        raise ValueError(f"--bench {args.bench} needs --prompts: records with `id` (the image id), `images` and "
                         f"`question` (e.g. 'Describe this image in detail.')")
    metric = build_metric(args, prompts)
    model, processor = load_policy(args.model)
    report = evaluate(model, processor, prompts, metric, args.model, args.max_new_tokens)
    write_json(out, report)
    print(f"{args.bench}: {summary_line(report)} -> {out}")
    return 0
