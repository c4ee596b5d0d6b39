"""Check a `halign demo --json` report against the demo's claims; prints the figures.

    python tests/benchmarks/demo_targets.py demo_report.json [--max-chair-ratio 0.5] [--max-recall-drop 0.03]
                                                             [--max-pope-drop 0.01]

The claims (README, "What the demo shows"): CHAIR_s and CHAIR_i at most 0.5x, recall at most 3 points and
POPE accuracy at most 1 point lower after alignment (the round the gate kept) than before, on the test scenes.
"""

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("report")
    parser.add_argument("--max-chair-ratio", type=float, default=0.5)
    parser.add_argument("--max-recall-drop", type=float, default=0.03)
    parser.add_argument("--max-pope-drop", type=float, default=0.01)
    parser.add_argument("--min-n", type=int, default=300)
    args = parser.parse_args()
    report = json.load(open(args.report))
    before, after = report["before"], report["after"]
    ratio_i = after["chair_i"] / before["chair_i"]
    ratio_s = after["chair_s"] / before["chair_s"]
    drop = before["recall"] - after["recall"]
    print(f"held-out scenes: {after['n']}  pairs: {report['pairs']}  wall: {report['wall_seconds']:.0f} s "
          f"(seconds per round: {report.get('round_seconds')})")
    print(f"CHAIR_s {before['chair_s']:.3f} -> {after['chair_s']:.3f} ({ratio_s:.2f}x)")
    print(f"CHAIR_i {before['chair_i']:.3f} -> {after['chair_i']:.3f} ({ratio_i:.2f}x)")
    print(f"recall  {before['recall']:.3f} -> {after['recall']:.3f} (drop {100 * drop:.1f} points)")
    pope_before, pope_after = report["pope"]["before"]["accuracy"], report["pope"]["after"]["accuracy"]
    pope_drop = pope_before - pope_after
    print(f"POPE accuracy {pope_before:.3f} -> {pope_after:.3f} (drop {100 * pope_drop:.1f} points); "
          f"kept round {report.get('kept_round')}")
    failures = []
    if after["n"] < args.min_n:
        failures.append(f"only {after['n']} held-out scenes")
    if before["chair_i"] < 0.15:
        failures.append(f"the checkpoint barely hallucinates (CHAIR_i {before['chair_i']:.3f} < 0.15)")
    if ratio_i > args.max_chair_ratio:
        failures.append(f"CHAIR_i ratio {ratio_i:.2f} > {args.max_chair_ratio}")
    if ratio_s > args.max_chair_ratio:
        failures.append(f"CHAIR_s ratio {ratio_s:.2f} > {args.max_chair_ratio}")
    if pope_drop > args.max_pope_drop + 1e-9:
        failures.append(f"POPE accuracy dropped {100 * pope_drop:.1f} points > {100 * args.max_pope_drop:.0f}")
    if drop > args.max_recall_drop + 1e-9:
        failures.append(f"recall dropped {100 * drop:.1f} points > {100 * args.max_recall_drop:.0f}")
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
