"""The HTML report of a run folder, written at the end of `halign demo` and `halign run`.

Both compare the base model's report with the aligned one(s) through `halign compare --html`, so the page
is the one a user gets from the command line: `RUN/report.html`, next to the run's other outputs.
"""

from __future__ import annotations

from pathlib import Path


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def write_demo_html(run_dir: str | Path, report: dict) -> Path:
    """RUN/report.html for `halign demo`: the test scenes before alignment vs the round the gate kept
    (captions and POPE), that round's judgments, and the validation-per-round plot (recipes/rlaif.py)."""
    from halign.recipes.compare import run_compare

    run_dir, kept = Path(run_dir), report["kept_round"]
    before, after = run_dir / "test" / "round0", run_dir / "test" / f"round{kept}"
    judged = run_dir / f"round{max(1, kept)}"  # round 0 is the base model: nothing was judged for it
    plot = run_dir / "rlaif.png"
    run_compare([before / "report.json", after / "report.json"], run_dir / "compare", html=run_dir / "report.html",
                pope=[before / "pope.json", after / "pope.json"],
                judgments=_existing(judged / "judge" / "judgments.jsonl"),
                candidates=_existing(judged / "sample" / "candidates.jsonl"),
                extra_plots=[("validation per round", plot.read_bytes())] if plot.exists() else [],
                labels=["before", f"round {kept} (kept)"])
    return run_dir / "report.html"


def write_run_html(cfg: dict, run_dir: str | Path) -> Path | None:
    """RUN/report.html for `halign run` with `eval.before`: the base model against every round's policy,
    and the last round's judgments. None when the recipe has no before/after evaluation."""
    from halign.recipes import rounds
    from halign.recipes.compare import run_compare

    if cfg["eval"] is None or not cfg["eval"]["before"]:
        return None
    run_dir = Path(run_dir)
    dirs = rounds.round_dirs(cfg, run_dir)
    paths = [dirs[0] / "eval" / "report_before.json"] + [d / "eval" / "report_after.json" for d in dirs]
    labels = ["base"] + (["after"] if len(dirs) == 1 else [f"round {r}" for r in range(1, len(dirs) + 1)])
    # One round: the same comparison the eval stage wrote (same folder); more: the base against every round.
    out = dirs[0] / "eval" / "compare" if len(dirs) == 1 else run_dir / "compare"
    run_compare(paths, out, html=run_dir / "report.html", labels=labels,
                judgments=_existing(dirs[-1] / "judge" / "judgments.jsonl"),
                candidates=_existing(dirs[-1] / "sample" / "candidates.jsonl"))
    return run_dir / "report.html"
