"""`halign run` writes RUN/report.html: the base model against every round, from real tiny-model reports,
with each held-out scene's image, prompt and highlighted answers (and it opens cleanly in Chromium)."""

import json
import os
import re

import pytest
from test_runner import TINY_TOY, TOY  # tests/ is on sys.path (pytest's default "prepend" import mode)

from halign.recipes.runner import run_recipe


def page_data(html_path) -> dict:
    text = html_path.read_text()
    return json.loads(re.search(r'<script id="halign-data" type="application/json">(.*?)</script>', text, re.S)
                      .group(1))


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_checkpoint):
    run = tmp_path_factory.mktemp("html_run") / "run"
    run_recipe(TOY, TINY_TOY + ["rounds=2"], out=run, progress=False, log=lambda *_: None)
    return run


def test_run_folder_gets_a_report_page(two_rounds):
    data = page_data(two_rounds / "report.html")
    assert data["labels"] == ["base", "round 1", "round 2"]
    after = json.loads((two_rounds / "round_2" / "eval" / "report_after.json").read_text())
    assert data["n_items"] == len(after["per_item"]) == 4
    # halign eval now records each item's image and prompt, and the words its mentions matched.
    assert all(item["image"] and item["question"] for item in after["per_item"])
    assert all(len(item["mentioned_words"]) == len(item["mentions"]) for item in after["per_item"])
    for item, scored in zip(data["items"], after["per_item"]):
        answer = item["ans"][2]
        assert answer["t"] == scored["text"] and item["q"] == scored["question"]
        assert data["images"][item["img"]].startswith("data:image/png;base64,")
        assert [answer["t"][s:e].lower() for s, e, _ in answer["s"]] == scored["mentioned_words"]
    judged = sum(1 for _ in (two_rounds / "round_2" / "judge" / "judgments.jsonl").open())
    assert data["judge"]["n"] == judged
    assert [p["title"] for p in data["plots"]] == ["comparison"]
    assert (two_rounds / "compare" / "diff.jsonl").exists()


def test_run_page_opens_in_chromium(two_rounds):
    from chromium_page import ChromiumPage, find_chromium

    if find_chromium() is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but no chromium binary on PATH (.ci/run installs Debian's chromium)")
        pytest.skip("no chromium binary on PATH: the run page is not opened in a browser")
    with ChromiumPage() as page:
        page.open(two_rounds / "report.html")
        assert page.evaluate("document.body.dataset.ready") == "1"
        assert page.console_errors() == []
        assert page.evaluate("document.getElementById('item-count').textContent") == "4"


def test_demo_writes_its_report_page(tmp_path, tiny_checkpoint):
    from halign.recipes.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(str(tmp_path / "demo"))
    cfg.rounds = 1
    report = run_demo(cfg, progress=False, log=lambda *_: None)
    data = page_data(tmp_path / "demo" / "report.html")
    assert report["html"] == str(tmp_path / "demo" / "report.html")
    if report["kept_round"]:  # (tests/test_demo.py's one-round run keeps round 1 and checks this page too)
        assert data["labels"] == ["before", f"round {report['kept_round']} (kept)"]
        assert data["n_items"] == report["test_n"] == 24
        assert data["pope"]["n"] == len(json.loads((tmp_path / "demo" / "round_1" / "eval" / "pope_before.json")
                                        .read_text())["per_item"])
    assert data["judge"]["n"] > 0 and all(src for src in data["images"])

    # Had the gate kept round 0, no aligned model would have been scored on the test records: the page then
    # compares round 0 with the passed-over round on the validation records, never on the test records.
    from halign.recipes.html_runs import write_kept_html

    summary = json.loads((tmp_path / "demo" / "rounds.json").read_text()) | {"kept_round": 0}
    write_kept_html(tmp_path / "demo", summary)
    data = page_data(tmp_path / "demo" / "report.html")
    assert data["labels"] == ["round 0 (kept, validation)", "round 1 (passed over, validation)"]
    assert data["n_items"] == report["validation_n"] == 24 and data["pope"]["n"] == 6 * 24
