"""Size and open time of `halign compare --html` on a large comparison, in headless Chromium.

    python tests/benchmarks/html_report_size.py [--items 5000] [--reports 2] [--drawings]

Builds N items with one distinct image each (by default noisy 256x256 photos, the worst case for the
embedded thumbnails; --drawings: 48x48 toy-world-like PNGs), writes the page, then opens it in Chromium
three times and reports: file size (total, thumbnails, data), time to the load event, the page's own
time to its first rendered list (performance.now() when the script finishes: HTML parse, JSON.parse of
the data, first 50 cards), and the time to apply the "gained hallucinations" filter. Targets (issue 15):
under 2 s to open, under ~20 MB.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the fixtures and the browser driver

from chromium_page import ChromiumPage  # noqa: E402
from html_report_fixtures import write_reports  # noqa: E402

from halign.recipes.compare import run_compare  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--reports", type=int, default=2)
    parser.add_argument("--drawings", action="store_true", help="small PNG drawings instead of photos")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        paths = write_reports(folder, args.items, args.reports, photo=not args.drawings)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_compare(paths, folder / "out", html=folder / "report.html")
        built = time.perf_counter() - t0
        html = (folder / "report.html").read_text()
        data = json.loads(re.search(r'<script id="halign-data" type="application/json">(.*?)</script>', html,
                                    re.S).group(1))
        size = (folder / "report.html").stat().st_size
        thumbs = sum(len(s or "") for s in data["images"])
        plots = sum(len(p["src"]) for p in data["plots"])
        gained = sum(1 for line in (folder / "out" / "diff.jsonl").open()
                     if json.loads(line)["report"] == data["labels"][-1] and json.loads(line)["added"])
        loads, ready, filters = [], [], []
        with ChromiumPage() as page:
            for _ in range(args.runs):
                page.events.clear()
                loads.append(page.open(folder / "report.html"))
                ready.append(page.evaluate("window.halignReadyMs") / 1000)
                errors = page.console_errors()
                if errors:
                    raise SystemExit(f"console errors: {errors[:3]}")
                t0 = time.perf_counter()
                shown = page.evaluate("(() => { const s = document.getElementById('filter'); s.value = 'gained';"
                                      " s.dispatchEvent(new Event('change'));"
                                      " return document.getElementById('shown-count').textContent; })()")
                filters.append(time.perf_counter() - t0)
                assert shown == f"showing {gained} of {args.items} items", shown
    kind = "48x48 drawings" if args.drawings else "256x256 photos"
    print(f"{args.items} items x {args.reports} reports, one distinct {kind} each "
          f"(fixtures {made:.1f} s, page built in {built:.1f} s)")
    print(f"file: {size / 1e6:.1f} MB (thumbnails {thumbs / 1e6:.1f} MB = {thumbs / args.items / 1e3:.2f} kB each, "
          f"plots {plots / 1e6:.2f} MB, data and code {(size - thumbs - plots) / 1e6:.1f} MB)")
    print(f"open to load event: median {statistics.median(loads):.2f} s (runs: "
          f"{', '.join(f'{x:.2f}' for x in loads)})")
    print(f"first list rendered (page clock): median {statistics.median(ready):.2f} s")
    print(f"'gained hallucinations' filter ({gained} items): median {statistics.median(filters) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
