"""The demo over several seeds: the table the README quotes, and the claims checked on every seed.

    python tests/benchmarks/demo_seeds.py [--seeds 0 1 2 3 4] [--out halign_runs/demo_seeds] [--markdown FILE]
                                          [-- extra `halign demo` flags, e.g. --no-complete-yes-no]

Each seed seeds the world, the tiny checkpoint (seed 0 is shipped with the package; the others are built
once, about 5 minutes each on 2 cores, and cached) and the alignment. The demos run one after another (two
torch jobs at once slow each other down several times on 2 cores). A finished seed's report is reused on a
rerun. Prints, and writes as markdown, min / median / max of every metric before and after (the round the
gate kept), the machine and library versions, and per seed whether the demo's claims hold:
CHAIR_s and CHAIR_i at most 0.5x, recall at most 3 points lower, POPE accuracy at most 1 point lower, and
the kept round never worse than the last round on the validation split by the gate's rule.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROWS = (("CHAIR_s", "chair_s"), ("CHAIR_i", "chair_i"), ("recall", "recall"), ("POPE accuracy", "pope_accuracy"),
        ("POPE yes-ratio", "pope_yes_ratio"))


def flat(report: dict, side: str) -> dict:
    return {**report[side], **{f"pope_{k}": v for k, v in report["pope"][side].items()}}


def claims(report: dict) -> list[str]:
    """The demo's claims that fail for this report (empty: all hold)."""
    b, a = flat(report, "before"), flat(report, "after")
    failed = []
    if a["chair_s"] > 0.5 * b["chair_s"]:
        failed.append(f"CHAIR_s {b['chair_s']:.3f} -> {a['chair_s']:.3f} (> 0.5x)")
    if a["chair_i"] > 0.5 * b["chair_i"]:
        failed.append(f"CHAIR_i {b['chair_i']:.3f} -> {a['chair_i']:.3f} (> 0.5x)")
    if a["recall"] < b["recall"] - 0.03:
        failed.append(f"recall {b['recall']:.3f} -> {a['recall']:.3f} (> 3 points lower)")
    if a["pope_accuracy"] < b["pope_accuracy"] - 0.01:
        failed.append(f"POPE accuracy {b['pope_accuracy']:.3f} -> {a['pope_accuracy']:.3f} (> 1 point lower)")
    rounds, gate = report["rounds"], report["gate"]
    kept, last = rounds[gate["chosen_round"]], rounds[-1]
    # By the gate's own rule the kept round is at least as good as the last: lower metric if the last is eligible.
    if str(last["round"]) not in gate["passed_over"] and kept[gate["settings"]["metric"]] > last[gate["settings"]["metric"]]:
        failed.append(f"kept round {kept['round']} worse than the last round on validation")
    return failed


def run_seed(seed: int, out: Path, extra: list[str]) -> tuple[dict, float]:
    report_path = out / f"seed{seed}" / "demo_report.json"
    if report_path.exists():
        return json.loads(report_path.read_text()), 0.0
    started = time.time()
    cmd = ["halign", "demo", "--seed", str(seed), "--out", str(out / f"seed{seed}"), "--no-progress", *extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(report_path.read_text()), time.time() - started


def table(reports: dict[int, dict]) -> list[str]:
    lines = ["| metric (300 held-out test scenes) | before: min / median / max | after: min / median / max |",
             "| --- | --- | --- |"]
    for label, key in ROWS:
        cells = []
        for side in ("before", "after"):
            values = [flat(r, side)[key] for r in reports.values()]
            cells.append(f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return lines


def per_seed(reports: dict[int, dict]) -> list[str]:
    lines = ["| seed | CHAIR_s | CHAIR_i | recall | POPE acc. (yes-ratio) | kept round (validation) | claims |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for seed, r in reports.items():
        b, a = flat(r, "before"), flat(r, "after")
        failed = claims(r)
        lines.append(
            f"| {seed} | {b['chair_s']:.3f} -> {a['chair_s']:.3f} | {b['chair_i']:.3f} -> {a['chair_i']:.3f} | "
            f"{b['recall']:.3f} -> {a['recall']:.3f} | {b['pope_accuracy']:.3f} ({b['pope_yes_ratio']:.2f}) -> "
            f"{a['pope_accuracy']:.3f} ({a['pope_yes_ratio']:.2f}) | {r['kept_round']} of {len(r['rounds']) - 1} | "
            f"{'hold' if not failed else 'FAIL: ' + '; '.join(failed)} |")
    return lines


def machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {len(__import__('os').sched_getaffinity(0))} cores; Python {platform.python_version()}, "
            f"torch {version('torch')}, transformers {version('transformers')}, trl {version('trl')}, "
            f"peft {version('peft')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", default="halign_runs/demo_seeds")
    parser.add_argument("--markdown", default=None, help="write the tables here (default: OUT/seeds.md)")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    out = Path(args.out)
    reports, seconds = {}, {}
    for seed in args.seeds:
        reports[seed], seconds[seed] = run_seed(seed, out, extra)
        print(f"seed {seed}: done" + (f" in {seconds[seed]:.0f} s" if seconds[seed] else " (reused)"), flush=True)
    title = f"`halign demo` over seeds {', '.join(map(str, args.seeds))}" + (f" ({' '.join(extra)})" if extra else "")
    lines = [f"### {title}", "", *table(reports), "", *per_seed(reports), "",
             f"Machine: {machine()}. Command: `python tests/benchmarks/demo_seeds.py "
             f"--seeds {' '.join(map(str, args.seeds))}{' -- ' + ' '.join(extra) if extra else ''}`; "
             f"demo wall time per seed (checkpoint build included where it ran): "
             + ", ".join(f"{s}: {seconds[s]:.0f} s" for s in args.seeds if seconds[s]) + "."]
    text = "\n".join(lines)
    print(text)
    path = Path(args.markdown) if args.markdown else out / "seeds.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    failing = [s for s, r in reports.items() if claims(r)]
    if failing:
        print(f"claims fail on seed(s) {failing}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
