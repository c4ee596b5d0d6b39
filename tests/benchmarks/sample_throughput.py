"""Sampling throughput: batched generation vs one prompt at a time (standalone; not collected by pytest).

    HALIGN_CACHE=/tmp/hcache python tests/benchmarks/sample_throughput.py [--prompts 64 --k 8 --batch-size 32]

Both arms produce the same number of candidates (prompts x k) from the same toy checkpoint: the batched arm
calls `generate_texts(batch_size=B, k=K)` (B prompts left-padded together, each expanded to K sequences in one
`generate`), the naive arm calls it with batch_size=1, k=1, K times per prompt. Prints candidates/s for
both and their ratio; exit status 1 when the ratio is below --target (default 4x, on CPU).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--target", type=float, default=4.0)
    parser.add_argument("--standard", action="store_true", help="the standard checkpoint, not the quick one")
    args = parser.parse_args()

    from halign.align.model import load_policy
    from halign.data_gen import toy_world
    from halign.data_gen.sample import generate_texts
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig, get_toy_checkpoint
    from halign.recipes.demo import QUICK_CHECKPOINT

    cfg = ToyCheckpointConfig() if args.standard else ToyCheckpointConfig(**QUICK_CHECKPOINT)
    checkpoint = get_toy_checkpoint(cfg, progress=False)
    model, processor = load_policy(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        records = toy_world.write_prompts(toy_world.ToyWorldConfig(), "bench", args.prompts, tmp)
        common = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, progress=False)
        generate_texts(model, processor, records[:2], k=2, batch_size=2, **common)  # warm-up (lazy inits)

        t0 = time.perf_counter()
        batched = generate_texts(model, processor, records, k=args.k, batch_size=args.batch_size, **common)
        t_batched = time.perf_counter() - t0

        t0 = time.perf_counter()
        naive = [[generate_texts(model, processor, [rec], k=1, batch_size=1, seed=s, **common)[0][0]
                  for s in range(args.k)] for rec in records]
        t_naive = time.perf_counter() - t0

    n = args.prompts * args.k
    assert sum(map(len, batched)) == sum(map(len, naive)) == n
    rate_b, rate_n = n / t_batched, n / t_naive
    ratio = rate_b / rate_n
    print(f"checkpoint: {checkpoint.name} ({'standard' if args.standard else 'quick'}), torch threads "
          f"{torch.get_num_threads()}, {args.prompts} prompts x k={args.k} = {n} candidates, "
          f"max_new_tokens={args.max_new_tokens}")
    print(f"batched (batch_size={args.batch_size}, k={args.k}): {t_batched:7.2f} s  {rate_b:8.1f} candidates/s")
    print(f"one at a time (batch_size=1, k=1):    {t_naive:7.2f} s  {rate_n:8.1f} candidates/s")
    print(f"ratio: {ratio:.1f}x (target >= {args.target:g}x)")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    raise SystemExit(main())
