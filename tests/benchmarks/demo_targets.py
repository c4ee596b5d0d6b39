"""Check a `halign demo --json` report against the foundation issue's targets; prints the figures.

    python tests/benchmarks/demo_targets.py demo_report.json [--max-chair-ratio 0.8] [--max-recall-drop 0.05]
"""

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("--max-chair-ratio", type=float, default=0.8)
    parser.add_argument("--max-recall-drop", type=float, default=0.05)
    parser.add_argument("--min-n", type=int, default=300)
    args = parser.parse_args()
    report = json.load(open(args.report))
    before, after = report["before"], report["after"]
    ratio_i = after["chair_i"] / before["chair_i"]
    ratio_s = after["chair_s"] / before["chair_s"]
    drop = before["recall"] - after["recall"]
    print(f"held-out scenes: {after['n']}  pairs: {report['pairs']}  wall: {report['wall_seconds']:.0f} s "
          f"(stages: {report.get('stage_seconds')})")
    print(f"CHAIR_s {before['chair_s']:.3f} -> {after['chair_s']:.3f} ({ratio_s:.2f}x)")
    print(f"CHAIR_i {before['chair_i']:.3f} -> {after['chair_i']:.3f} ({ratio_i:.2f}x)")
    print(f"recall  {before['recall']:.3f} -> {after['recall']:.3f} (drop {100 * drop:.1f} points)")
    failures = []
    if after["n"] < args.min_n:
        failures.append(f"only {after['n']} held-out scenes")
    if before["chair_i"] < 0.15:
        failures.append(f"the checkpoint barely hallucinates (CHAIR_i {before['chair_i']:.3f} < 0.15)")
    if ratio_i > args.max_chair_ratio:
        failures.append(f"CHAIR_i ratio {ratio_i:.2f} > {args.max_chair_ratio}")
    if drop > args.max_recall_drop:
        failures.append(f"recall dropped {100 * drop:.1f} points > {100 * args.max_recall_drop:.0f}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
