"""`halign compare`: paired statistics checked by hand, refusals, and the CLI on small report files."""

import itertools
import json

import numpy as np
import pytest

from halign.recipes import stats
from halign.recipes.cli import main
from halign.recipes.compare import run_compare
from halign.rewards.object_hallucination import ObjectVocabulary, aggregate, score_item

VOCAB = ObjectVocabulary.from_categories({s: [s, s + "s"] for s in ("circle", "square", "star", "triangle")})
GT = {"a": ["circle"], "b": ["square", "star"], "c": ["triangle"]}
BEFORE = {"a": "a circle and a square and a square", "b": "a square and a star", "c": "a triangle and a star"}
AFTER = {"a": "a circle", "b": "a square", "c": "a triangle"}


def report(texts, gt=GT, benchmark="object_chair", settings=None):
    items = [{"id": i, "text": t, **score_item(t, gt[i], VOCAB)} for i, t in texts.items()]
    metrics = aggregate(items)
    return {"model": "m", "benchmark": benchmark, "n": metrics["n"], "metrics": metrics,
            "settings": settings or {"decoding": "greedy", "max_new_tokens": 64}, "per_item": items}


def matrices():
    a, b = report(BEFORE), report(AFTER)
    ids = list(GT)
    return stats.count_matrix(a["per_item"], ids), stats.count_matrix(b["per_item"], ids), a, b


def test_metrics_are_recomputed_from_counts_like_the_scorer():
    a, b, ra, rb = matrices()
    for metric in stats.METRICS:
        assert stats.metric_value(a, metric) == pytest.approx(ra["metrics"][metric])
        assert stats.metric_value(b, metric) == pytest.approx(rb["metrics"][metric])
    # CHAIR_i is a ratio of sums: 3 hallucinated of 7 mentions, not the mean of 2/3, 0/2, 1/2.
    assert stats.metric_value(a, "chair_i") == pytest.approx(3 / 7)


def test_permutation_p_value_by_hand():
    a, b, _, _ = matrices()
    # Observed CHAIR_i: A = (2+0+1)/(3+2+2) = 3/7, B = 0/3, |diff| = 3/7. Swapping an item moves its counts
    # (hallucinated, mentions) between the reports: A = {a: 2/3, b: 0/2, c: 1/2}, B = {a: 0/1, b: 0/1, c: 0/1}.
    #   swapped  A'                B'                |diff|
    #   -        3/7               0                 3/7  hit
    #   a        (0+0+1)/5 = 1/5   (2+0+0)/5 = 2/5   1/5
    #   b        (2+0+1)/6 = 1/2   0/4 = 0           1/2  hit
    #   c        (2+0+0)/6 = 1/3   (0+0+1)/4 = 1/4   1/12
    #   a,b      (0+0+1)/4 = 1/4   (2+0+0)/6 = 1/3   1/12
    #   a,c      0/4 = 0           (2+0+1)/6 = 1/2   1/2  hit
    #   b,c      (2+0+0)/5 = 2/5   (0+0+1)/5 = 1/5   1/5
    #   a,b,c    0                 3/7               3/7  hit
    # -> p = 4/8. (A mean of per-item ratios would give other numbers: the ratio of sums matters.)
    assert stats.permutation_p_value(a, b, "chair_i") == pytest.approx(0.5)
    # CHAIR_s: flags (1,0,1) -> (0,0,0); |diff| = 2/3 only when a and c are swapped alike: 4 of 8.
    assert stats.permutation_p_value(a, b, "chair_s") == pytest.approx(0.5)
    assert stats.permutation_p_value(a, a, "chair_i") == 1.0


def test_bootstrap_ci_matches_exact_enumeration():
    a, b, _, _ = matrices()
    for metric in ("chair_i", "recall", "mean_len"):
        # All 27 resamples of 3 items are equally likely; each has mass 1/27 > 2.5%, so the exact 95%
        # percentile interval runs from the smallest to the largest resampled difference.
        diffs = [stats.metric_value(b[list(idx)], metric) - stats.metric_value(a[list(idx)], metric)
                 for idx in itertools.product(range(3), repeat=3)]
        low, high = stats.bootstrap_diff_ci(a, b, metric, n_boot=4000, seed=0)
        assert (low, high) == pytest.approx((min(diffs), max(diffs)))
    # chair_i by hand: the lowest difference is resampling item a three times: 0/1 - 6/9 = -2/3.
    assert stats.bootstrap_diff_ci(a, b, "chair_i", 4000)[0] == pytest.approx(-2 / 3)


def test_bootstrap_is_seeded_and_large_samples_use_monte_carlo():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, size=(40, len(stats.COLUMNS))).astype(float)
    b = rng.integers(0, 3, size=(40, len(stats.COLUMNS))).astype(float)
    assert stats.bootstrap_diff_ci(a, b, "chair_i", 500, seed=3) == stats.bootstrap_diff_ci(a, b, "chair_i", 500, seed=3)
    p = stats.permutation_p_value(a, b, "chair_i", n_perm=500)
    assert 1 / 501 <= p <= 1


def test_refuses_incomparable_reports(tmp_path):
    paths = {}
    variants = {"base": report(BEFORE), "items": report({"a": "a circle", "b": "a square", "d": "x"},
                                                        gt={**GT, "d": ["star"]}),
                "bench": report(AFTER, benchmark="chair"),
                "settings": report(AFTER, settings={"decoding": "greedy", "max_new_tokens": 32})}
    for name, rep in variants.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(rep))
    for name, words in (("items", "different item set"), ("bench", "benchmark"), ("settings", "max_new_tokens")):
        with pytest.raises(ValueError, match=words):
            run_compare([paths["base"], paths[name]], tmp_path / "out")
    forced = run_compare([paths["base"], paths["items"]], tmp_path / "forced", force=True, n_boot=200)
    assert forced["ids"] == ["a", "b"] and "different item set" in forced["markdown"]


def test_cli_two_and_three_reports(tmp_path, capsys):
    before, after, later = tmp_path / "before.json", tmp_path / "after.json", tmp_path / "round2.json"
    before.write_text(json.dumps(report(BEFORE)))
    after.write_text(json.dumps(report(AFTER)))
    later.write_text(json.dumps(report({**AFTER, "c": "a triangle and a star"})))
    out = tmp_path / "cmp"
    assert main(["compare", str(before), str(after), "--out", str(out), "--bootstrap", "500"]) == 0
    text = (out / "compare.md").read_text()
    assert "| chair_i | after | 0.429 | 0.000 | -0.429 | -100.0% |" in text
    assert "| square | 2 | 0 | 0 | 0 |" in text  # two hallucinated squares disappeared from item a
    assert "| star | 1 | 0 | 1 | 0 |" in text  # item c dropped its false star, item b lost its true one
    assert text in capsys.readouterr().out
    diff = [json.loads(line) for line in (out / "diff.jsonl").read_text().splitlines()]
    assert {d["id"] for d in diff} == {"a", "b", "c"}
    assert next(d for d in diff if d["id"] == "a")["removed"] == ["square", "square"]
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["compare", str(before), str(after), str(later), "--out", str(tmp_path / "three"),
                 "--bootstrap", "200"]) == 0
    assert "| chair_s | round2 |" in (tmp_path / "three" / "compare.md").read_text()
    # Incomparable reports: one-line error, exit 2.
    other = tmp_path / "other.json"
    other.write_text(json.dumps(report(AFTER, benchmark="chair")))
    assert main(["compare", str(before), str(other), "--out", str(tmp_path / "x")]) == 2
    assert "not comparable" in capsys.readouterr().err
