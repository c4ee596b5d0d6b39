"""POPE: reference answer parser, metrics by hand, question builder, CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import require_shared_data

from halign.recipes.cli import main as cli_main
from halign.rewards.base import Metric
from halign.rewards.pope import (PopeMetric, build_pope_questions, parse_pope_answer, pope_metrics,
                                 question_text, score_pope_split)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("answer, expected", [
    ("No, there is not", "no"),
    ("Yes.", "yes"),
    ("There isn't", "yes"),        # the reference only knows the words No / no / not
    ("", "yes"),
    (None, "yes"),
    ("No.", "no"),
    ("no", "no"),
    ("NO", "yes"),
    ("There is not a dog.", "no"),
    ("Yes. But no cat.", "yes"),   # only the first sentence counts
    ("Yes, no doubt", "no"),
    ("Nope", "yes"),
])
def test_parser_follows_reference_rules(answer, expected):
    assert parse_pope_answer(answer) == expected


def test_metrics_by_hand():
    preds = ["yes", "yes", "no", "no", "yes", "no"]
    labels = ["yes", "no", "no", "yes", "yes", "no"]
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 2, 1)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert pope_metrics(["no"], ["no"])["precision"] == 0.0  # no ZeroDivisionError


def test_score_split_with_answer_file_edge_cases():
    questions = [{"question_id": i, "image": "a.jpg", "text": "?", "label": lab}
                 for i, lab in enumerate(["yes", "no", "no", "yes", "no"], start=1)]
    answers = [{"question_id": 1, "answer": "Yes."}, {"question_id": 2, "answer": "No, there is not"},
               {"question_id": 3, "answer": "There isn't"}, {"question_id": 4, "answer": ""},
               {"question_id": 9, "answer": "No"}]
    r = score_pope_split(questions, answers)
    # preds: yes, no, yes, yes -> TP 2, FP 1, TN 1, FN 0
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 1, 0)
    assert r["accuracy"] == pytest.approx(3 / 4) and r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == 1.0 and r["f1"] == pytest.approx(0.8) and r["yes_ratio"] == pytest.approx(3 / 4)
    assert r["missing_ids"] == [9] and r["unanswered_ids"] == [5]
    # without question ids, answers pair with questions by order
    by_order = score_pope_split(questions[:2], [{"text": "Yes"}, {"text": "Yes"}])
    assert (by_order["tp"], by_order["fp"]) == (1, 1)
    with pytest.raises(ValueError):
        score_pope_split(questions, [{"text": "Yes"}])


def test_builder_strategies():
    gt = {"img1": ["person", "dog", "frisbee"], "img2": ["person", "dog", "car", "apple"],
          "img3": ["person", "car", "bus"], "img4": ["cat"], "img5": ["person", "umbrella", "bench"]}
    for strategy in ("random", "popular", "adversarial"):
        qs = build_pope_questions(gt, strategy, n=3, seed=1)
        assert len(qs) == 4 * 6  # img4 has fewer than 3 objects
        assert [q["label"] for q in qs[:6]] == ["yes", "no"] * 3
        for q in qs:
            if q["label"] == "no":
                assert q["object"] not in gt[q["image"]]
        per_image = {}
        for q in qs:
            per_image.setdefault(q["image"], []).append(q["object"])
        assert all(len(set(v)) == 6 for v in per_image.values())
    popular = build_pope_questions(gt, "popular", n=3)
    # ranking: person 4, dog 2, car 2, then frisbee, apple, bus (first seen first); img1 holds person, dog,
    # frisbee, so its negatives are car, apple, bus
    assert [q["object"] for q in popular[:6]] == ["person", "car", "dog", "apple", "frisbee", "bus"]
    adversarial = build_pope_questions(gt, "adversarial", n=3)
    # img3's first positive is person, whose most frequent companion not in img3 is dog (2 images)
    assert [q["object"] for q in adversarial if q["image"] == "img3"][:2] == ["person", "dog"]
    assert question_text("apple") == "Is there an apple in the image?"
    assert question_text("dog") == "Is there a dog in the image?"


def test_reference_question_files_score_perfectly_with_their_labels():
    path = DATA / "pope" / "coco_pope_adversarial.json"
    require_shared_data(path, "POPE reference question file")
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    answers = [{"question_id": q["question_id"], "text": "Yes" if q["label"] == "yes" else "No"} for q in questions]
    r = score_pope_split(questions, answers)
    assert r["n"] == 3000 and r["accuracy"] == 1.0 and r["yes_ratio"] == 0.5


def test_metric_protocol():
    metric = PopeMetric()
    assert isinstance(metric, Metric)
    r = metric.score([{"question_id": "q1", "answer": "No"}], {"q1": {"label": "no", "image": "x"}})
    assert r["accuracy"] == 1.0


def test_cli_end_to_end(tmp_path, capsys):
    splits = {"random": ["Yes", "No", "There isn't"], "popular": ["No", "No, there is not", "yes"]}
    args = ["score", "pope"]
    for name, texts in splits.items():
        q = tmp_path / f"coco_pope_{name}.json"
        a = tmp_path / f"answers_{name}.jsonl"
        q.write_text("\n".join(json.dumps({"question_id": i + 1, "image": "x.jpg", "text": "?", "label": lab})
                               for i, lab in enumerate(["yes", "no", "no"])) + "\n")
        a.write_text("\n".join(json.dumps({"question_id": i + 1, "answer": t}) for i, t in enumerate(texts)))
        args += ["--questions", str(q), "--answers", str(a)]
    out = tmp_path / "report.json"
    assert cli_main(args + ["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["splits"]) == {"random", "popular"}
    assert report["splits"]["random"]["accuracy"] == pytest.approx(2 / 3)
    assert report["splits"]["popular"]["accuracy"] == pytest.approx(1 / 3)
    assert report["accuracy"] == pytest.approx(0.5)
    assert "random" in capsys.readouterr().out
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"a.jpg": ["dog", "cat", "person"], "b.jpg": ["car", "bus", "truck"]}))
    qs = tmp_path / "qs.jsonl"
    assert cli_main(["score", "pope-questions", "--gt", str(gt), "--strategy", "popular", "--out", str(qs)]) == 0
    assert len(qs.read_text().splitlines()) == 12
