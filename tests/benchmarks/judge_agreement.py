"""Do the claims judge (self-feedback: the policy labels its own claims from the image) and the offline grounding
judge agree on which candidate hallucinates more? (standalone; not collected by pytest)

    HALIGN_CACHE=/tmp/hcache python tests/benchmarks/judge_agreement.py [--prompts 100 --k 8]

Samples K answers per toy-world prompt with the standard toy checkpoint (`get_toy_checkpoint()`, built once and
cached), judges them with `grounding` (exact ground truth) and with `claims` (splitter "objects", verifier
"image", the same checkpoint as labeler), and prints the ensemble judge's agreement statistics. The headline
figure is `agree_on_a`: of the answer pairs (same prompt) that grounding orders strictly by number of distinct
hallucinated objects, the share that claims orders the same way. Exit status 1 when it is not above --target.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="the quick (barely trained) checkpoint instead")
    parser.add_argument("--target", type=float, default=0.5)
    args = parser.parse_args()

    from halign.align.model import load_policy
    from halign.data_gen import toy_world
    from halign.data_gen.sample import generate_texts
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig, get_toy_checkpoint
    from halign.recipes.demo import QUICK_CHECKPOINT
    from halign.rewards.judges.claims import ClaimsJudge
    from halign.rewards.judges.ensemble import EnsembleJudge
    from halign.rewards.judges.grounding import GroundingJudge

    checkpoint = get_toy_checkpoint(ToyCheckpointConfig(**QUICK_CHECKPOINT) if args.quick else None)
    model, processor = load_policy(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        records = toy_world.write_prompts(toy_world.ToyWorldConfig(), "dpo", args.prompts, tmp)
        t0 = time.perf_counter()
        texts = generate_texts(model, processor, records, k=args.k, temperature=args.temperature, progress=False)
        t_sample = time.perf_counter() - t0
        candidates = [{"id": f"{r['id']}#{i}", "prompt_id": r["id"], "text": t}
                      for r, answers in zip(records, texts) for i, t in enumerate(answers)]
        prompts = {r["id"]: r for r in records}
        claims = ClaimsJudge(splitter="objects", verifier="image", labeler=str(checkpoint),
                             labeler_model=model, labeler_processor=processor, progress=False)
        ensemble = EnsembleJudge([GroundingJudge(vocabulary="toy"), claims], mode="mean")
        t0 = time.perf_counter()
        judged = ensemble.judge(candidates, prompts)
        t_judge = time.perf_counter() - t0

        # How often the labeler's verdict on a mentioned object matches the exact ground truth.
        right = total = 0
        for cand, j in zip(candidates, claims.judge(candidates, prompts)):
            truth = set(prompts[cand["prompt_id"]]["objects"])
            for claim in j["claims"]:
                total += 1
                right += claim["verdict"] == (claim["text"] in truth)

    stats = ensemble.agreement["grounding vs claims"]
    print(f"checkpoint: {checkpoint.name}; {args.prompts} prompts x k={args.k} = {len(candidates)} candidates "
          f"(sampling {t_sample:.1f} s, judging {t_judge:.1f} s)")
    print(f"labeler accuracy on mentioned objects: {right}/{total} = {right / max(total, 1):.3f}")
    print(json.dumps(stats, indent=2))
    agree = stats["order"]["agree_on_a"]
    print(f"pairs grounding orders strictly: {stats['order']['decided_by_a']}; claims agrees on "
          f"{agree:.1%} of them (target > {args.target:.0%})")
    return 0 if agree is not None and agree > args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
