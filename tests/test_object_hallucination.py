import pytest

from halign.rewards.object_hallucination import ObjectHallucinationMetric, ObjectVocabulary, aggregate, score_item
from halign.rewards.judges.grounding import GroundingJudge

VOCAB = {"circle": ["circles"], "square": ["squares"], "star": ["stars"]}


def test_score_item_counts_repeated_mentions():
    vocab = ObjectVocabulary.from_categories(VOCAB)
    item = score_item("A red circle, two stars and a star. Circles!", ["circle", "square"], vocab)
    assert item["mentions"] == ["circle", "star", "star", "circle"]
    assert item["hallucinated"] == ["star", "star"]
    assert item["covered"] == ["circle"]
    assert item["n_words"] == 9


def test_aggregate_by_hand():
    vocab = ObjectVocabulary.from_categories(VOCAB)
    items = [
        score_item("a circle and a star", ["circle"], vocab),  # 2 mentions, 1 hallucinated
        score_item("a square", ["square", "circle"], vocab),  # 1 mention, 0 hallucinated, recall 1/2
        score_item("", ["star"], vocab),  # empty caption: zero mentions
    ]
    m = aggregate(items)
    assert m["chair_s"] == pytest.approx(1 / 3)
    assert m["chair_i"] == pytest.approx(1 / 3)
    assert m["recall"] == pytest.approx(2 / 4)
    assert m["mean_len"] == pytest.approx((5 + 2 + 0) / 3)
    assert m["n"] == 3


def test_metric_lists_missing_ids_instead_of_crashing():
    metric = ObjectHallucinationMetric(VOCAB)
    report = metric.score([{"id": "a", "text": "a star"}, {"id": "zzz", "text": "a circle"}],
                          {"a": {"objects": ["star"]}})
    assert report["missing_ids"] == ["zzz"]
    assert report["metrics"]["n"] == 1 and report["metrics"]["chair_i"] == 0.0


def test_conflicting_vocabulary_is_refused():
    with pytest.raises(ValueError, match="maps to both"):
        ObjectVocabulary.from_categories({"a": ["x"], "b": ["x"]})


def test_grounding_judge_scores_coverage_minus_weighted_hallucination():
    judge = GroundingJudge(VOCAB, hallucination_weight=2.0)
    cands = [{"id": "p#0", "prompt_id": "p", "text": "a circle and a square"},
             {"id": "p#1", "prompt_id": "p", "text": "a circle and a star"},
             {"id": "q#0", "prompt_id": "q", "text": "a circle"}]
    out = judge.judge(cands, {"p": {"objects": ["circle", "square"]}})
    assert [j["score"] for j in out] == [2.0, 1.0 - 2.0, None]
    assert out[1]["hallucinated"] == ["star"]
    assert out[2]["error"].startswith("unknown prompt_id")
    assert all(j["judge"] == "grounding" for j in out)
