"""`halign compare --html`: the page's data, highlighting, images and errors (no browser; see
test_html_report_browser.py for the page itself in headless Chromium)."""

import json
import re

import pytest
from html_report_fixtures import write_judgments, write_pope_reports, write_reports

from halign.recipes import html_images
from halign.recipes.cli import main
from halign.recipes.compare import labels_for, run_compare
from halign.recipes.html_report import answer_view, highlight_spans
from halign.rewards.object_hallucination import ObjectVocabulary, score_item


def page_data(html_path) -> dict:
    """The JSON block of a written page, read back as the browser reads it."""
    text = html_path.read_text()
    block = re.search(r'<script id="halign-data" type="application/json">(.*?)</script>', text, re.S).group(1)
    return json.loads(block)


def test_highlights_the_words_the_scorer_matched():
    vocab = ObjectVocabulary.from_categories({"circle": ["circles"], "star": ["stars"]})
    text = "Two Circles and a star; no star here."
    item = {"id": "x", "text": text, **score_item(text, ["circle"], vocab)}
    view = answer_view(item, "r")
    assert [text[s:e] for s, e, _ in view["s"]] == ["Circles", "star", "star"]
    assert [h for _, _, h in view["s"]] == [0, 1, 1]
    assert view["h"] == ["star", "star"] and view["c"] == ["circle"] and view["m"] == []
    assert view["cs"] == 1 and view["ci"] == pytest.approx(2 / 3) and view["r"] == 1.0


def test_highlights_chair_reports_and_reports_without_matched_words():
    # CHAIR stores singular lemmas and two-word phrases; the category name alone (older reports) still finds
    # its plural, and a word that cannot be found is skipped, not misplaced.
    text = "A toilet  seat and two dogs near a cat."
    spans = highlight_spans(text, ["toilet seat", "dog", "zebra", "cat"], ["toilet", "dog", "zebra", "cat"], {"dog"})
    assert [(text[s:e], h) for s, e, h in spans] == [("toilet  seat", 1), ("dogs", 0), ("cat", 1)]
    chair_item = {"id": 1, "caption": "two dogs", "mentioned_words": ["dog"], "mapped_objects": ["dog"],
                  "hallucinated_objects": [], "ground_truth": ["dog", "cat"], "len": 2}
    view = answer_view(chair_item, "r")
    assert view["t"] == "two dogs" and view["s"] == [[4, 8, 0]] and view["m"] == ["cat"] and view["r"] == 0.5


def test_page_data_matches_the_reports_and_diff_jsonl(tmp_path):
    paths = write_reports(tmp_path, 40, n_reports=3)
    ids = [f"scene{i}" for i in range(40)]
    pope = write_pope_reports(tmp_path, ids, n_reports=3)
    judgments, candidates = write_judgments(tmp_path, ids[:5])
    result = run_compare(paths, tmp_path / "out", html=tmp_path / "page.html", pope=pope, judgments=judgments,
                         candidates=candidates)
    data = page_data(tmp_path / "page.html")
    assert data["labels"] == ["r0", "r1", "r2"] and data["n_items"] == 40 and len(data["items"]) == 40
    assert [i["id"] for i in data["items"]] == result["ids"]
    diffs = [json.loads(line) for line in (tmp_path / "out" / "diff.jsonl").read_text().splitlines()]
    for j, label in enumerate(("r1", "r2")):
        listed = {d["id"]: d for d in diffs if d["report"] == label}
        for item in data["items"]:
            change = item["d"][j]
            assert (change is None) == (item["id"] not in listed)
            if change:
                assert change["a"] == listed[item["id"]]["added"] and change["r"] == listed[item["id"]]["removed"]
    reports = [json.loads(p.read_text()) for p in paths]
    assert data["items"][3]["ans"][2]["t"] == reports[2]["per_item"][3]["text"]
    # Scene images are shared by the caption items, the POPE questions and the judged prompts: stored once.
    assert len(data["images"]) == 40 and all(src.startswith("data:image/png;base64,") for src in data["images"])
    assert {w["img"] for w in data["pope"]["wrong"]} <= set(range(40))
    assert [r["kind"] for r in data["pope"]["table"]] == ["random", "popular", "adversarial", "mean over splits"]
    assert data["judge"]["n"] == 10 and data["judge"]["prompts"][0]["cands"][0]["text"].startswith("a circle")
    assert [p["title"] for p in data["plots"]] == ["comparison", "POPE"]


def test_text_cannot_break_out_of_the_page(tmp_path):
    paths = write_reports(tmp_path, 3, images=False)
    report = json.loads(paths[1].read_text())
    report["per_item"][0]["text"] = "</script><script>alert(1)</script> {{DATA}}"
    paths[1].write_text(json.dumps(report))
    run_compare(paths, tmp_path / "out", html=tmp_path / "page.html")
    html = (tmp_path / "page.html").read_text()
    assert html.count("</script>") == 2  # the data block's and the script's own
    assert page_data(tmp_path / "page.html")["items"][0]["ans"][1]["t"] == report["per_item"][0]["text"]


def test_thumbnails_stay_within_their_byte_budget(tmp_path):
    paths = write_reports(tmp_path, 4, photo=True)
    image = json.loads(paths[0].read_text())["per_item"][0]["image"]
    for budget in (24_000, 4_000, 2_000):
        mime, data = html_images.thumbnail_bytes(html_images.Path(image), budget)
        assert mime == "image/jpeg" and len(data) * 4 / 3 <= budget
    table = html_images.ImageTable("link", tmp_path / "sub", [tmp_path])
    assert table.add(image) == 0 and table.add(image) == 0 and table.add("missing.png") == 1
    assert table.sources() == ["../images/scene0.jpg", None] and table.missing == ["missing.png"]


def test_judge_panel_keeps_a_bounded_number_of_prompts(tmp_path, monkeypatch):
    from halign.recipes import html_panels

    judgments, candidates = write_judgments(tmp_path, [f"p{i}" for i in range(7)], k=3)
    monkeypatch.setattr(html_panels, "MAX_JUDGED_PROMPTS", 5)
    panel = html_panels.judge_panel(judgments, candidates, html_images.ImageTable("none", tmp_path, []))
    assert panel["n"] == 21 and panel["n_prompts"] == 7 and [p["pid"] for p in panel["prompts"]] == \
        [f"p{i}" for i in range(5)]
    assert [c["cid"] for c in panel["prompts"][0]["cands"]] == ["p0#0", "p0#1", "p0#2"]


def test_cli_writes_the_page_and_names_bad_input(tmp_path, capsys):
    paths = write_reports(tmp_path, 6, images=False)
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "c"), "--html", str(tmp_path / "r.html"),
                 "--bootstrap", "200"]) == 0
    assert (tmp_path / "r.html").stat().st_size > 1000 and "r.html" in capsys.readouterr().out
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "c"), "--pope", str(paths[0])]) == 2
    assert "add --html" in capsys.readouterr().err
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "c"), "--html", str(tmp_path / "r.html"),
                 "--pope", str(paths[0])]) == 2
    assert "one POPE report per compared report" in capsys.readouterr().err
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "c"), "--html", str(tmp_path / "r.html"),
                 "--pope", str(paths[0]), str(paths[1])]) == 2
    assert f"{paths[0]}: not a POPE report" in capsys.readouterr().err
    bad = tmp_path / "judgments.jsonl"
    bad.write_text('{"score": 1}\n')
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "c"), "--html", str(tmp_path / "r.html"),
                 "--judgments", str(bad)]) == 2
    assert "record 1 lacks prompt_id" in capsys.readouterr().err


def test_pope_reports_compare_on_pope_metrics(tmp_path):
    paths = write_reports(tmp_path, 5, images=False)
    pope = write_pope_reports(tmp_path, [f"scene{i}" for i in range(5)])
    result = run_compare(pope, tmp_path / "out", html=tmp_path / "pope.html")
    assert [r["metric"] for r in result["rows"]] == ["accuracy", "precision", "recall", "f1", "yes_ratio"]
    data = page_data(tmp_path / "pope.html")
    assert data["items"] is None and data["pope"]["n"] == 15 and paths


def test_labels_tell_round_folders_apart(tmp_path):
    paths = [tmp_path / f"round_{r}" / "eval" / "report_after.json" for r in (1, 2)]
    assert labels_for(paths) == ["round_1/eval/report_after", "round_2/eval/report_after"]
    assert labels_for([tmp_path / "a.json", tmp_path / "b.json"]) == ["a", "b"]
