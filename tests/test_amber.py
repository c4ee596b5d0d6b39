"""AMBER: hand-made responses with hand-computed generative and discriminative scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shared_data import require_shared_data

from halign.recipes.cli import main as cli_main
from halign.rewards.amber import AmberData, AmberMetric, parse_yes_no, score_amber
from halign.rewards.base import Metric

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# A miniature AMBER written for these tests: same file formats, a few words.
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["dog", "grass", "tree"], "hallu": ["cat", "ball"]},
    {"id": 2, "type": "generative", "truth": ["car", "road"], "hallu": ["person"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
    {"id": 4, "type": "discriminative-hallucination", "truth": "yes"},
    {"id": 5, "type": "discriminative-attribute-state", "truth": "no"},
    {"id": 6, "type": "discriminative-attribute-number", "truth": "yes"},
    {"id": 7, "type": "discriminative-relation", "truth": "no"},
    {"id": 8, "type": "relation", "truth": "yes"},
]
ASSOCIATION = {"dog": ["puppy"], "grass": ["lawn"], "tree": [], "cat": ["kitten"], "ball": [], "car": ["vehicle"],
               "road": ["street"], "person": ["man", "woman"], "sky": [], "light": []}
SAFE_WORDS = ["light"]


@pytest.fixture()
def data():
    return AmberData(ANNOTATIONS, ASSOCIATION, SAFE_WORDS)


RESPONSES = [
    # kept nouns: puppy(cover dog), lawn(cover grass), kitten(halluc., cog cat), light(safe), sky(halluc.)
    {"id": 1, "response": "A puppy runs on the lawn, chasing a kitten under the light and the sky."},
    # kept nouns: vehicle(cover car), street(cover road) -> no hallucination
    {"id": 2, "response": "A vehicle is parked in the street."},
    {"id": 3, "response": "No"},             # truth no, answer no
    {"id": 4, "response": "Yes, there is."},  # truth yes, answer yes
    {"id": 5, "response": "Yes"},            # truth no, answer yes
    {"id": 6, "response": "No."},            # truth yes, answer no
    {"id": 7, "response": "no"},             # truth no, answer no
    {"id": 8, "response": "I am not sure"},  # unparsed: wrong, not a "No"
    {"id": 999, "response": "No"},           # not in the annotations
]


def test_generative_and_discriminative_by_hand(data):
    r = score_amber(RESPONSES, data)
    item1 = r["per_item"][0]
    assert item1["nouns"] == ["puppy", "lawn", "kitten", "light", "sky"]
    assert item1["hallucinated"] == ["kitten", "sky"]
    assert item1["covered"] == ["dog", "grass"] and item1["cog"] == ["cat"]
    assert r["chair"] == pytest.approx(2 / 7)          # 2 hallucinated of 5 + 2 kept nouns
    assert r["cover"] == pytest.approx(4 / 5)          # dog, grass, car, road of 5 truth objects
    assert r["hal"] == pytest.approx(1 / 2)
    assert r["cog"] == pytest.approx(1 / 3)
    # discriminative, "no" positive: answers no on 3, 6, 7 -> 2 correct "no"s; truth no on 3, 5, 7
    overall = r["discriminative"]["overall"]
    assert overall["accuracy"] == pytest.approx(3 / 6)
    assert overall["precision"] == pytest.approx(2 / 3) and overall["recall"] == pytest.approx(2 / 3)
    assert overall["f1"] == pytest.approx(2 / 3)
    assert r["discriminative"]["existence"]["accuracy"] == 1.0
    assert r["discriminative"]["attribute"]["accuracy"] == 0.0
    assert r["discriminative"]["relation"]["accuracy"] == pytest.approx(1 / 2)
    assert r["discriminative"]["relation"]["recall"] == 1.0
    assert r["amber_score"] == pytest.approx((1 - 2 / 7 + 2 / 3) / 2)
    assert r["missing_ids"] == [999] and r["n"] == 8


def test_optional_similarity_hook(data):
    # a toy similarity: "hound" is close to "dog", nothing else is close to anything
    sim = lambda a, b: 0.9 if {a, b} == {"hound", "dog"} else 0.0  # noqa: E731
    data = AmberData(ANNOTATIONS, {**ASSOCIATION, "hound": []}, SAFE_WORDS)
    plain = score_amber([{"id": 1, "response": "A hound on the grass."}], data)
    assert plain["per_item"][0]["hallucinated"] == ["hound"]
    similar = score_amber([{"id": 1, "response": "A hound on the grass."}], data, similarity=sim)
    assert similar["per_item"][0]["hallucinated"] == [] and similar["per_item"][0]["covered"] == ["dog", "grass"]
    assert similar["matching"].endswith("+similarity")


def test_yes_no_parser():
    assert [parse_yes_no(t) for t in ["Yes", " yes.", "No, it is not", "NO", "", None, "Maybe"]] == \
        ["yes", "yes", "no", "no", None, None, None]


def test_metric_protocol(data):
    metric = AmberMetric(data)
    assert isinstance(metric, Metric)
    assert metric.score([{"id": 3, "response": "No"}], {})["disc_accuracy"] == 1.0


def test_released_files_load_and_score():
    amber = DATA / "amber"
    require_shared_data(amber / "annotations.json", "AMBER released-files")
    data = AmberData.from_dir(amber)
    truth = data.annotations[1]["truth"]
    r = score_amber([{"id": 1, "response": "The image shows " + ", ".join(truth) + "."}], data)
    assert r["chair"] == 0.0 and r["hal"] == 0.0
    assert r["cover"] == pytest.approx(len(set(truth)) / len(truth))


def test_cli_end_to_end(tmp_path, capsys):
    amber = tmp_path / "amber"
    amber.mkdir()
    (amber / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (amber / "relation.json").write_text(json.dumps(ASSOCIATION))
    (amber / "safe_words.txt").write_text("\n".join(SAFE_WORDS) + "\n")
    inp = tmp_path / "responses.json"
    inp.write_text(json.dumps(RESPONSES))
    out = tmp_path / "report.json"
    assert cli_main(["score", "amber", "--input", str(inp), "--amber-dir", str(amber), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["amber_score"] == pytest.approx((1 - 2 / 7 + 2 / 3) / 2)
    assert report["missing_ids"] == [999]
    assert "AMBER score" in capsys.readouterr().out
