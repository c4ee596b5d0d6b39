"""`halign compare A.json B.json [C.json ...]`: is B really better than A, and where?

Reads evaluation reports (model, benchmark, n, metrics, settings, per_item), and writes to --out:
  compare.md   a table per metric: value, absolute and relative change against the first report, a paired
               bootstrap 95% interval of the change, and a paired permutation p-value (see recipes/stats.py),
               then a per-item summary: hallucinated objects that disappeared / appeared, coverage lost;
  compare.png  a bar chart per metric (and a line across reports when there are more than two, e.g. rounds);
  diff.jsonl   one record per item whose answer or object lists changed, against the first report;
  --html PATH  one self-contained HTML page: the table, the plots and a per-item browser (html_report.py).
Reports scored on different item sets, benchmarks or metric settings are not comparable: refused unless
--force (then statistics use the items all reports share, and the table says so).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, write_jsonl
from halign.recipes import stats
from halign.rewards.metrics import LOWER, OBJECT_COUNT_KINDS, spec_for_benchmark



def load_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"report not found: {path}")
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None
    missing = [k for k in ("benchmark", "metrics", "per_item") if k not in report]
    if missing:
        raise ValueError(f"{path}: not an evaluation report (lacks {missing}); `halign eval` writes one")
    return report


def labels_for(paths: list[Path]) -> list[str]:
    """File stems, or the shortest path tails that tell the reports apart when stems collide
    (run1/report.json vs run2/report.json; round_1/eval/report_after.json vs round_2/eval/report_after.json)."""
    parts = [p.with_suffix("").parts for p in paths]
    for depth in range(1, max(len(x) for x in parts) + 1):
        labels = ["/".join(x[-depth:]) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def shown_metrics(report: dict) -> list[str]:
    """The metrics a comparison table and plot show: the summary metrics the benchmark's registry entry
    declares (rewards/metrics.py), else (a metric from outside the registry) all of them."""
    spec = spec_for_benchmark(report["benchmark"])
    return [m for m in (spec.summary if spec else ()) if m in report["metrics"]] or list(report["metrics"])


def lower_is_better(report: dict, metric: str) -> bool:
    spec = spec_for_benchmark(report["benchmark"])
    return spec is not None and spec.direction(metric) == LOWER


def check_comparable(reports: list[dict], labels: list[str], force: bool) -> list[str]:
    """Problems that make the reports incomparable; raises unless `force` (then returns them as warnings)."""
    problems = []
    first, first_ids = reports[0], {str(i["id"]) for i in reports[0]["per_item"]}
    for label, rep in zip(labels[1:], reports[1:]):
        if rep["benchmark"] != first["benchmark"]:
            problems.append(f"{label} was scored on benchmark {rep['benchmark']!r}, {labels[0]} on {first['benchmark']!r}")
        # Decoding and scorer settings change the numbers as much as the model does; `model` may differ.
        if rep.get("settings", {}) != first.get("settings", {}):
            keys = sorted(k for k in set(rep.get("settings", {})) | set(first.get("settings", {}))
                          if rep.get("settings", {}).get(k) != first.get("settings", {}).get(k))
            problems.append(f"{label} has different metric settings than {labels[0]} (keys: {', '.join(keys)})")
        ids = {str(i["id"]) for i in rep["per_item"]}
        if ids != first_ids:
            problems.append(f"{label} was scored on a different item set than {labels[0]} "
                            f"({len(ids - first_ids)} items only in {label}, {len(first_ids - ids)} only in {labels[0]})")
    if problems and not force:
        raise ValueError("reports are not comparable: " + "; ".join(problems) + " (pass --force to compare anyway)")
    return problems


def common_ids(reports: list[dict]) -> list[str]:
    ids = [str(i["id"]) for i in reports[0]["per_item"]]
    shared = set(ids).intersection(*({str(i["id"]) for i in r["per_item"]} for r in reports[1:]))
    return [i for i in ids if i in shared]


def compare_reports(reports: list[dict], labels: list[str], n_boot: int = 2000, seed: int = 0) -> dict:
    """Rows (one per later report x metric) with paired statistics over the shared items."""
    ids = common_ids(reports)
    kinds = [stats.report_item_kind(r) for r in reports]
    matrices = None  # per-item records without object counts: report values only, no intervals
    if all(kind is None or kind in OBJECT_COUNT_KINDS for kind in kinds):
        try:  # a report without a recorded kind (an older one) may still lack the counts
            matrices = [stats.count_matrix(r["per_item"], ids, kind) for r, kind in zip(reports, kinds)]
        except (KeyError, ValueError):
            matrices = None
    rows = []
    for j in range(1, len(reports)):
        for metric in shown_metrics(reports[0]):
            row = {"report": labels[j], "metric": metric, "a": reports[0]["metrics"].get(metric),
                   "b": reports[j]["metrics"].get(metric)}
            if matrices is not None and metric in stats.METRICS and ids:
                row.update(stats.compare_metric(matrices[0], matrices[j], metric, n_boot, seed))
            elif isinstance(row["a"], (int, float)) and isinstance(row["b"], (int, float)):
                row.update(diff=row["b"] - row["a"], rel=(row["b"] - row["a"]) / row["a"] if row["a"] else None)
            rows.append(row)
    return {"ids": ids, "rows": rows}


def objects_of(item: dict, kind: str | None) -> tuple[list[str], set[str]]:
    """(hallucinated objects, covered objects) of a per-item record; none for records without objects
    (yes/no answers, ratings)."""
    try:
        fields = stats.object_fields(item, kind)
    except (KeyError, ValueError):
        return [], set()
    return fields["hallucinated"], set(fields["covered"])


def item_diff(before: dict, after: dict, label: str, kinds: tuple[str | None, str | None] = (None, None)) -> dict | None:
    """What changed for one item: hallucinations removed/added (as multisets), coverage lost/gained.
    `kinds`: the two reports' per-item kinds (None: guessed from the keys, for older reports)."""
    (hal_before, cb), (hal_after, ca) = objects_of(before, kinds[0]), objects_of(after, kinds[1])
    hb, ha = Counter(hal_before), Counter(hal_after)
    record = {"report": label, "id": before["id"], "removed": sorted((hb - ha).elements()),
              "added": sorted((ha - hb).elements()), "coverage_lost": sorted(cb - ca),
              "coverage_gained": sorted(ca - cb), "text_before": before.get("text"), "text_after": after.get("text")}
    changed = any(record[k] for k in ("removed", "added", "coverage_lost", "coverage_gained"))
    return record if changed or record["text_before"] != record["text_after"] else None


def per_item_diffs(reports: list[dict], labels: list[str], ids: list[str]) -> list[dict]:
    first = {str(i["id"]): i for i in reports[0]["per_item"]}
    out = []
    for rep, label in zip(reports[1:], labels[1:]):
        items = {str(i["id"]): i for i in rep["per_item"]}
        kinds = (stats.report_item_kind(reports[0]), stats.report_item_kind(rep))
        out += [d for i in ids if (d := item_diff(first[i], items[i], label, kinds)) is not None]
    return out


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(reports: list[dict], labels: list[str], result: dict, diffs: list[dict], warnings: list[str],
             n_boot: int) -> str:
    lines = [f"# halign compare: {', '.join(labels)}", "",
             f"Benchmark `{reports[0]['benchmark']}`, {len(result['ids'])} paired items; changes are against "
             f"`{labels[0]}`. 95% CI: paired percentile bootstrap over items ({n_boot} resamples, metrics "
             f"recomputed from per-item counts). p: two-sided paired permutation test (per-item swaps; exact "
             f"enumeration up to {stats.EXACT_MAX_ITEMS} items, else {n_boot} random swaps).", ""]
    lines += [f"> warning (--force): {w}" for w in warnings] + ([""] if warnings else [])
    lines += ["| metric | report | " + f"{labels[0]} | value | change | relative | 95% CI of change | p |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if "ci_low" in r else "n/a"
        rel = f"{r['rel']:+.1%}" if r.get("rel") is not None else "n/a"
        diff = f"{r['diff']:+.3f}" if r.get("diff") is not None else "n/a"
        lines.append(f"| {r['metric']} | {r['report']} | {_fmt(r['a'])} | {_fmt(r['b'])} | {diff} | {rel} | {ci} | "
                     f"{_fmt(r.get('p'), 4)} |")
    last = labels[-1]
    mine = [d for d in diffs if d["report"] == last]
    removed, added = Counter(), Counter()
    lost, gained = Counter(), Counter()
    for d in mine:
        removed.update(d["removed"]), added.update(d["added"]), lost.update(d["coverage_lost"])
        gained.update(d["coverage_gained"])
    lines += ["", f"## Per item: {labels[0]} -> {last}", "",
              f"{len(mine)} of {len(result['ids'])} items changed; "
              f"{sum(bool(d['removed']) and not d['added'] for d in mine)} lost hallucinations only, "
              f"{sum(bool(d['added']) and not d['removed'] for d in mine)} gained hallucinations only, "
              f"{sum(bool(d['coverage_lost']) for d in mine)} lost coverage of a true object. "
              f"Details: diff.jsonl.", "",
              "| object | hallucinations removed | hallucinations added | coverage lost | coverage gained |",
              "| --- | --- | --- | --- | --- |"]
    for obj in sorted(set(removed) | set(added) | set(lost) | set(gained)):
        lines.append(f"| {obj} | {removed[obj]} | {added[obj]} | {lost[obj]} | {gained[obj]} |")
    return "\n".join(lines) + "\n"


def plot(reports: list[dict], labels: list[str], result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in shown_metrics(reports[0])
               if all(isinstance(r["metrics"].get(m), (int, float)) for r in reports)]
    if not metrics:
        raise ValueError("no numeric metric shared by all reports to plot")
    rows = {(r["report"], r["metric"]): r for r in result["rows"]}
    series = len(reports) > 2
    fig, axes = plt.subplots(1 + series, len(metrics), figsize=(3.2 * len(metrics), 3.4 * (1 + series)),
                             squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for col, metric in enumerate(metrics):
        ax = axes[0][col]
        values = [r["metrics"][metric] for r in reports]
        # Error bars: the paired 95% CI of the change, drawn around each later report's value (the first
        # report has none). Text stays short (value, change) so neighbouring bars do not collide.
        low, high = [0.0] * len(reports), [0.0] * len(reports)
        for i in range(1, len(reports)):
            row = rows.get((labels[i], metric))
            if row and "ci_low" in row:
                low[i], high[i] = row["diff"] - row["ci_low"], row["ci_high"] - row["diff"]
        ax.bar(range(len(reports)), values, color=[colors[i % len(colors)] for i in range(len(reports))])
        ax.errorbar(range(1, len(reports)), values[1:], yerr=[low[1:], high[1:]], fmt="none", capsize=4,
                    ecolor="0.25")
        for i, value in enumerate(values):
            row = rows.get((labels[i], metric))
            text = f"{value:.3f}" + (f"\n{row['diff']:+.3f}" if row and row.get("diff") is not None else "")
            ax.annotate(text, (i, value + high[i]), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                        textcoords="offset points")
        values = [v + h for v, h in zip(values, high)]
        top = max(values) if max(values) > 0 else 1.0
        ax.set_ylim(0, top * 1.3)
        ax.set_xticks(range(len(reports)), labels, rotation=20, ha="right", fontsize=8)
        arrow = " (lower is better)" if lower_is_better(reports[0], metric) else ""
        ax.set_title(metric + arrow, fontsize=9)
    if series:
        for col, metric in enumerate(metrics):
            ax = axes[1][col]
            ax.plot(range(len(reports)), [r["metrics"][metric] for r in reports], marker="o")
            ax.set_xticks(range(len(reports)), labels, rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{metric} across reports", fontsize=9)
            ax.grid(alpha=0.3)
    fig.suptitle(f"{reports[0]['benchmark']}, {len(result['ids'])} paired items: value, change vs {labels[0]}; "
                 f"error bars = paired bootstrap 95% CI of the change",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_compare(paths: list[str | Path], out: str | Path, force: bool = False, n_boot: int = 2000,
                seed: int = 0, html: str | Path | None = None, pope: list[str | Path] | None = None,
                judgments: str | Path | None = None, candidates: str | Path | None = None,
                html_images: str = "embed", extra_plots: list[tuple[str, bytes]] = (),
                labels: list[str] | None = None) -> dict:
    """Python API: writes compare.md, compare.png and diff.jsonl under `out`; returns the result.

    With `html`, also the self-contained HTML page (recipes/html_report.py) there: `pope` reports add the
    POPE panel (same models, same order), `judgments` (+ the sampler's `candidates`) the judge panel."""
    if len(paths) < 2:
        raise ValueError("compare needs at least two reports")
    paths = [Path(p) for p in paths]
    reports = [load_report(p) for p in paths]
    labels = labels or labels_for(paths)
    if len(labels) != len(paths) or len(set(labels)) != len(labels):
        raise ValueError(f"labels must name each report once, got {labels} for {len(paths)} reports")
    warnings = check_comparable(reports, labels, force)
    out = ensure_writable_dir(out)
    result = compare_reports(reports, labels, n_boot, seed)
    diffs = per_item_diffs(reports, labels, result["ids"])
    text = markdown(reports, labels, result, diffs, warnings, n_boot)
    (out / "compare.md").write_text(text)
    write_jsonl(out / "diff.jsonl", diffs)
    plot(reports, labels, result, out / "compare.png")
    if html:
        from halign.recipes.html_report import write_compare_html

        write_compare_html(html, paths, reports, labels, result, diffs, warnings, out / "compare.png",
                           pope=pope, judgments=judgments, candidates=candidates, image_mode=html_images,
                           extra_plots=extra_plots)
    return {**result, "markdown": text, "warnings": warnings, "out": str(out), "html": str(html) if html else None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("reports", nargs="+", help="report JSON files (the first is the baseline)")
    parser.add_argument("--out", default="halign_compare", help="output folder (default: halign_compare)")
    parser.add_argument("--force", action="store_true",
                        help="compare reports scored on different items, benchmarks or settings")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples / random permutations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--html", help="also write a self-contained HTML report (item browser, filters) here")
    parser.add_argument("--pope", nargs="+", metavar="REPORT",
                        help="--html: POPE reports of the same models, in the same order (adds a POPE panel)")
    parser.add_argument("--judgments", help="--html: judgments.jsonl to show (judge panel)")
    parser.add_argument("--candidates", help="--html: the candidates.jsonl the judgments score (answer texts)")
    parser.add_argument("--html-images", choices=["embed", "link", "none"], default="embed",
                        help="--html: thumbnails embedded in the file (default), linked relative to it, or none")


def main(args: argparse.Namespace) -> int:
    if args.bootstrap < 100:
        raise ValueError("--bootstrap must be >= 100 for a usable 95% interval")
    if not args.html and (args.pope or args.judgments or args.candidates):
        raise ValueError("--pope, --judgments and --candidates go into the HTML report: add --html PATH")
    result = run_compare(args.reports, args.out, args.force, args.bootstrap, args.seed, html=args.html,
                         pope=args.pope, judgments=args.judgments, candidates=args.candidates,
                         html_images=args.html_images)
    print(result["markdown"])
    print(f"wrote {Path(result['out']) / 'compare.md'}, compare.png, diff.jsonl"
          + (f", {result['html']}" if result["html"] else ""))
    return 0
