"""The HTML report of a run folder, written at the end of `halign run` (and so of `halign demo` / `rlaif`).

Both compare the base model's report with the aligned one(s) through `halign compare --html`, so the page
is the one a user gets from the command line: `RUN/report.html`, next to the run's other outputs.
"""

from __future__ import annotations

from pathlib import Path


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _yes_no_name(folder: Path, suffix: str = "") -> str:
    """Which yes/no benchmark a run scored, by its file in `folder`: `pope` for scenes, `qa` for clips (the
    names recipes/scoring.py writes, with `suffix` such as "_before"); `pope` when neither is there."""
    from halign.recipes.scoring import YES_NO_NAMES

    return next((n for n in YES_NO_NAMES.values() if (folder / f"{n}{suffix}.json").exists()), "pope")


def write_kept_html(run_dir: str | Path, summary: dict) -> Path:
    """RUN/report.html of a run that keeps one round (`eval.rounds: kept`, as `halign demo` and `halign rlaif`
    run): the test records before alignment vs the round the gate kept (captions and, where scored, POPE or
    the clip questions), that round's judgments, and the validation-per-round plot. When the gate kept round
    0, no aligned model was scored on the test records, so the page compares on the validation records
    instead (_round_0_kept_pages)."""
    from halign.recipes.compare import run_compare

    run_dir, kept = Path(run_dir), summary["kept_round"]
    first = run_dir / "round_1" / "eval"
    plot = run_dir / "rounds.png"
    plots = [("validation per round", plot.read_bytes())] if plot.exists() else []
    if kept:
        after = run_dir / f"round_{kept}" / "eval"
        reports = [first / "report_before.json", after / "report_after.json"]
        yes_no = _yes_no_name(first, "_before")
        pope = [first / f"{yes_no}_before.json", after / f"{yes_no}_after.json"]
        labels, judged = ["before", f"round {kept} (kept)"], run_dir / f"round_{kept}"
    else:
        reports, pope, labels, judged = _round_0_kept_pages(run_dir, summary)
    run_compare(reports, run_dir / "compare", html=run_dir / "report.html",
                pope=pope if all(p.exists() for p in pope) else None,
                judgments=_existing(judged / "judge" / "judgments.jsonl"),
                candidates=_existing(judged / "sample" / "candidates.jsonl"),
                extra_plots=plots, labels=labels)
    return run_dir / "report.html"


def _round_0_kept_pages(run_dir: Path, summary: dict):
    """(reports, POPE reports, labels, the judged round's folder) when the gate kept round 0: the validation
    records, round 0 against the round with the best gate metric (the one a user wants to see why it was passed
    over). The test records stay unlooked-at for every aligned round, as the gate's contract says."""
    metric = summary["gate"]["settings"]["metric"]
    rounds = [v for v in summary["validation"] if v["round"] > 0]
    best = min(rounds, key=lambda v: (v[metric], v["round"]))["round"]
    folders = [run_dir / "validation" / "round_0", run_dir / f"round_{best}" / "validation"]
    yes_no = _yes_no_name(folders[0])
    return ([f / "report.json" for f in folders], [f / f"{yes_no}.json" for f in folders],
            ["round 0 (kept, validation)", f"round {best} (passed over, validation)"], run_dir / f"round_{best}")


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
