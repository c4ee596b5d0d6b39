"""`halign eval`: generate with a checkpoint (greedy), then score a hallucination benchmark.

Benchmarks: `toy` (describe each held-out toy scene; CHAIR-style object hallucination against the exact
ground truth) and `pope` (answer every yes/no existence question of each held-out toy scene; POPE metrics
per kind).

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
    by_id = {str(p["id"]): p for p in prompts}
    for item in scored["per_item"]:  # what the HTML report shows next to each answer
        prompt = by_id.get(str(item.get("id")), {})
        item.setdefault("image", (prompt.get("images") or [None])[0])
        item.setdefault("question", prompt.get("question"))
    return {
        "model": model_name,
        "benchmark": scored["benchmark"],
        "n": scored["metrics"].get("n", scored.get("n")),
        "metrics": scored["metrics"],
        "settings": {"decoding": "greedy", "max_new_tokens": max_new_tokens, **scored.get("settings", {})},
        "missing_ids": scored.get("missing_ids", []),
        "per_item": scored["per_item"],
        **({"kinds": scored["kinds"]} if "kinds" in scored else {}),  # POPE: the per-kind table
        "wall_seconds": round(time.time() - started, 2),
    }


def toy_metric():
    from halign.data_gen.toy_world import ToyWorldConfig
    from halign.rewards.object_hallucination import ObjectHallucinationMetric

    return ObjectHallucinationMetric(ToyWorldConfig().vocabulary())


def pope_metric():
    from halign.rewards.toy_pope import ToyPopeMetric

    return ToyPopeMetric()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint folder (or a LoRA adapter folder)")
    parser.add_argument("--bench", choices=["toy", "pope", "chair", "amber"], default="toy")
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


def main(args: argparse.Namespace) -> int:
    from halign.align.model import load_policy
    from halign.data_gen import toy_world

    out = Path(args.out)
    if args.prompts:
        prompts = read_records(args.prompts)
    else:
        prompts = toy_world.write_prompts(toy_world.ToyWorldConfig(), "eval", args.n, out.parent / "toy_eval")
    if args.bench == "pope":
        from halign.rewards.toy_pope import pope_prompts

        prompts = pope_prompts(prompts)  # one prompt per question, same image
    if args.bench in ("chair", "amber") and not args.prompts:
        raise ValueError(f"--bench {args.bench} needs --prompts: records with `id` (the image id), `images` and "
                         f"`question` (e.g. 'Describe this image in detail.')")
    metric = pope_metric() if args.bench == "pope" else toy_metric()
    if args.bench == "chair":
        from halign.rewards.chair import ChairMetric, load_chair_gt, lookup_gt

        if not args.gt:
            raise ValueError("--bench chair needs --gt (object-set JSON or COCO annotation files)")
        metric = ChairMetric(args.lemmatizer, args.synonyms, id_key="id", caption_key="text")
        gt = load_chair_gt(args.gt, metric.vocab)
        for p in prompts:  # records the ground truth lacks are listed as missing_ids, not dropped
            found = lookup_gt(gt, p["id"])
            if found is not None:
                p["objects"] = sorted(found)
    elif args.bench == "amber":
        from halign.rewards.amber import AmberData, AmberMetric
        from halign.rewards.benchmark_data import data_dir

        amber_dir = args.amber_dir or data_dir() / "amber"
        metric = AmberMetric(AmberData.from_dir(amber_dir), id_key="id", response_key="text")
    model, processor = load_policy(args.model)
    report = evaluate(model, processor, prompts, metric, args.model, args.max_new_tokens)
    write_json(out, report)
    m = report["metrics"]
    if args.bench == "pope":
        kinds = " ".join(f"{k}:acc={r['accuracy']:.3f}/f1={r['f1']:.3f}" for k, r in report["kinds"].items())
        print(f"pope: n={m['n']} accuracy={m['accuracy']:.3f} f1={m['f1']:.3f} yes_ratio={m['yes_ratio']:.3f} "
              f"({kinds}) -> {out}")
    elif args.bench == "amber":
        print(f"amber: n={report['n']} " + " ".join(f"{k}={v:.3f}" for k, v in m.items()
                                                   if isinstance(v, float)) + f" -> {out}")
    else:
        print(f"{args.bench}: n={report['n']} CHAIR_s={m['chair_s']:.3f} CHAIR_i={m['chair_i']:.3f} "
              f"recall={m['recall']:.3f} len={m['mean_len']:.1f} -> {out}")
    return 0
