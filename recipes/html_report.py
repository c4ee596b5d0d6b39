"""One self-contained HTML page for a before/after comparison (`halign compare ... --html report.html`).

The page holds everything inline: CSS, the script (html_assets/report.js) and the data as one JSON block,
thumbnails as data URIs (recipes/html_images.py). It opens offline, from a mail attachment or a file
browser, without a server. What it shows:
  - the metric table of `halign compare` (bootstrap 95% CI, permutation p) and the plots as embedded PNGs;
  - an item browser: image, prompt, every report's answer side by side with hallucinated object words and
    covered ground-truth words highlighted, missed objects listed, per-answer CHAIR_s / CHAIR_i / recall;
    filters (gained / lost hallucinations, lost / gained coverage, by object), sorting by metric change,
    search, and the per-object table, whose rows filter the browser when clicked;
  - a POPE panel (per split, wrong answers listed) and a judge panel (judgments.jsonl), when given.
Speed: the script renders one page of items at a time (50 rows), so 5,000 items cost one JSON.parse and
50 rows of DOM; see tests/benchmarks/html_report_size.py for the measured size and open time.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

from halign.recipes import stats
from halign.recipes.html_images import ImageTable, png_data_uri
from halign.recipes.html_panels import is_pope_report, judge_panel, pope_panel

ASSETS = "html_assets"


def highlight_spans(text: str, words: list[str], categories: list[str], truth: set[str]) -> list[list[int]]:
    """[start, end, hallucinated 0/1] for each object mention found in `text`, in order.

    `words` are the mention words the scorer matched (`mentioned_words`), parallel to `categories`; reports
    written before that key existed pass the categories themselves. Each word is searched after the previous
    match, as a whole word with an optional suffix ("circle" finds "circles"; the CHAIR lemmatizer stores
    singular forms), and "toilet seat" also matches "toilet  seat". A word that is not found is skipped.
    """
    spans, pos, lowered = [], 0, text.lower()
    for word, category in zip(words, categories):
        pattern = r"(?<![a-z])" + r"\s+".join(re.escape(w) for w in word.lower().split()) + r"[a-z]*"
        match = re.compile(pattern).search(lowered, pos)
        if match is None:
            continue
        spans.append([match.start(), match.end(), int(category not in truth)])
        pos = match.end()
    return spans


def answer_view(item: dict, where: str, kind: str | None = None) -> dict:
    """One report's answer to one item, with its object lists and CHAIR-style scores. `kind`: the report's
    per-item kind (rewards/metrics.py); None for an older report (guessed from the keys)."""
    try:
        fields = stats.object_fields(item, kind)
        any_hal, n_hal, n_mentions, n_covered, n_truth, n_words = stats.item_counts(item, kind)
    except (KeyError, ValueError) as err:
        raise ValueError(f"{where}: item {item.get('id')!r} has no object counts ({err})") from None
    truth = set(fields["ground_truth"])
    categories, hallucinated, covered = fields["mentions"], fields["hallucinated"], sorted(fields["covered"])
    text = item.get("text") or item.get("caption") or ""
    words = item.get("mentioned_words") or categories
    return {"t": text, "s": highlight_spans(text, words, categories, truth), "h": list(hallucinated),
            "c": covered, "m": sorted(truth - set(covered)), "cs": any_hal,
            "ci": n_hal / n_mentions if n_mentions else 0.0, "r": n_covered / n_truth if n_truth else 0.0,
            "w": n_words}


def item_views(reports: list[dict], labels: list[str], ids: list[str], diffs: list[dict], images) -> list[dict]:
    """Per shared item: image, prompt, ground truth, every report's answer, and its diff.jsonl record per later
    report (None when diff.jsonl has none: nothing changed)."""
    by_report = [{str(i["id"]): i for i in r["per_item"]} for r in reports]
    diff_index = {(d["report"], str(d["id"])): d for d in diffs}
    views = []
    for item_id in ids:
        first = by_report[0][item_id]
        images_of = first.get("image") or (first.get("images") or [None])[0]
        changes = []
        for label in labels[1:]:
            d = diff_index.get((label, item_id))
            changes.append(None if d is None else {"a": d["added"], "r": d["removed"], "cl": d["coverage_lost"],
                                                    "cg": d["coverage_gained"]})
        views.append({"id": item_id, "img": images.add(images_of), "q": first.get("question") or first.get("prompt"),
                      "gt": sorted(first.get("ground_truth", [])),
                      "ans": [answer_view(b[item_id], label, stats.report_item_kind(r))
                              for b, label, r in zip(by_report, labels, reports)],
                      "d": changes})
    return views


def metric_rows(rows: list[dict]) -> list[dict]:
    keys = ("report", "metric", "a", "b", "diff", "rel", "ci_low", "ci_high", "p")
    return [{k: _finite(r.get(k)) for k in keys} for r in rows]


def _finite(value):
    """JSON has no NaN: a missing statistic is null."""
    return None if isinstance(value, float) and value != value else value


def build_payload(reports: list[dict], labels: list[str], result: dict, diffs: list[dict], warnings: list[str],
                  html_path: Path, search_dirs: list[Path], plots: list[tuple[str, bytes]] = (),
                  pope: tuple[list[dict], list[str]] | None = None, judgments: str | Path | None = None,
                  candidates: str | Path | None = None, image_mode: str = "embed") -> dict:
    """Everything report.js shows, as one JSON-serializable dict."""
    images = ImageTable(image_mode, html_path.parent, search_dirs)
    payload = {"title": f"halign compare: {' vs '.join(labels)}", "benchmark": reports[0]["benchmark"],
               "labels": labels, "models": [r.get("model") for r in reports], "warnings": warnings,
               "n_items": len(result["ids"]), "rows": metric_rows(result["rows"]),
               "plots": [{"title": title, "src": png_data_uri(data)} for title, data in plots],
               "items": None, "pope": None, "judge": None}
    if is_pope_report(reports[0]):
        payload["pope"] = pope_panel(reports, labels, images)
    else:
        payload["items"] = item_views(reports, labels, result["ids"], diffs, images)
        if pope:
            payload["pope"] = pope_panel(pope[0], pope[1], images)
    if judgments:
        payload["judge"] = judge_panel(judgments, candidates, images)
    payload["images"] = images.sources()
    payload["missing_images"] = images.missing[:20]
    return payload


def _asset(name: str) -> str:
    return resources.files("halign.recipes").joinpath(ASSETS, name).read_text(encoding="utf-8")


def render_html(payload: dict) -> str:
    """The page: template + inline CSS + inline script + the data as a JSON script block."""
    # "</" inside a <script> block would end it early: escape the slash, which JSON reads back unchanged.
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    parts = {"TITLE": _escape(payload["title"]), "CSS": _asset("report.css"), "SCRIPT": _asset("report.js"),
             "DATA": data}
    # One pass over the template only: text inside the data can never be taken for a placeholder.
    return re.sub(r"\{\{(TITLE|CSS|SCRIPT|DATA)\}\}", lambda m: parts[m.group(1)], _asset("report.html"))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_html(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(payload), encoding="utf-8")
    return path


def read_report_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"report not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err.msg})") from None


def write_compare_html(html: str | Path, paths: list[Path], reports: list[dict], labels: list[str], result: dict,
                       diffs: list[dict], warnings: list[str], plot_path: Path, pope=None, judgments=None,
                       candidates=None, image_mode: str = "embed", extra_plots=()) -> Path:
    """The page for `halign compare --html` (called by run_compare, after compare.png is written)."""
    from halign.recipes.html_panels import pope_plot

    html = Path(html)
    plots = [("comparison", plot_path.read_bytes()), *extra_plots]
    pope_pair = None
    if pope:
        if len(pope) != len(reports):
            raise ValueError(f"--pope needs one POPE report per compared report ({len(reports)}), got {len(pope)}")
        pope_paths = [Path(p) for p in pope]
        pope_reports = [read_report_json(p) for p in pope_paths]
        for p, rep in zip(pope_paths, pope_reports):
            if not is_pope_report(rep):
                raise ValueError(f"{p}: not a POPE report (per-item prediction and label, or splits)")
        pope_pair = (pope_reports, labels)  # the same models, in the same order: the same names
    search_dirs = list(dict.fromkeys(p.parent for p in paths + ([Path(p) for p in pope] if pope else [])))
    payload = build_payload(reports, labels, result, diffs, warnings, html, search_dirs, plots, pope_pair,
                            judgments, candidates, image_mode)
    if payload["pope"]:
        payload["plots"].append({"title": "POPE", "src": png_data_uri(pope_plot(payload["pope"]))})
    return write_html(html, payload)
