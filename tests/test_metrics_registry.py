"""The metric registry (rewards/metrics.py): every entry is complete and consistent with its scorer, and the
tools read from it (recipe validation, `halign eval`, `halign score`, compare, stats) instead of own lists."""

import argparse

import pytest

from halign.recipes import config as recipe_config
from halign.recipes import stats
from halign.recipes.compare import compare_reports, lower_is_better, shown_metrics
from halign.rewards import metrics as registry
from halign.rewards.base import load_object
from halign.rewards.object_hallucination import ObjectVocabulary, aggregate, score_item


def test_every_entry_is_complete():
    for name, spec in registry.METRICS.items():
        assert spec.name == name and spec.description
        assert spec.item_kind in registry.ITEM_KINDS
        assert spec.summary and set(spec.summary.values()) <= {registry.LOWER, registry.HIGHER, registry.NEITHER}
        assert callable(load_object(spec.factory, {}))
    assert len({spec.benchmark for spec in registry.METRICS.values()}) == len(registry.METRICS)


def test_each_scorer_writes_the_benchmark_its_entry_declares():
    for spec in registry.METRICS.values():
        factory = load_object(spec.factory, {})
        if isinstance(factory, type):
            assert factory.name == spec.benchmark, spec.name
    toy = registry.metric_spec("toy").build()
    report = toy.score([{"id": "a", "text": "a circle"}], {"a": {"id": "a", "objects": ["circle"]}})
    assert report["benchmark"] == "object_chair" == registry.metric_spec("toy").benchmark


def test_where_each_metric_runs():
    assert registry.recipe_benchmarks() == ("toy", "toy_video", "chair")  # toy_video: the video demo's eval
    assert sorted(registry.eval_benches()) == ["amber", "chair", "pope", "toy"]
    assert registry.eval_benches()["pope"].name == "toy_pope"  # `halign eval --bench pope` asks toy scenes
    assert registry.score_cli_metrics() == ("chair", "pope", "amber", "mmhal")
    with pytest.raises(ValueError, match="built-ins are"):
        registry.metric_spec("nope")


def test_recipe_options_come_from_the_metric():
    assert registry.metric_spec("chair").options() == {"lemmatizer", "synonyms", "mode"}
    assert registry.metric_spec("toy").options() == set()
    chair = registry.metric_spec("chair").build(synonyms=[["circle"], ["square"]])
    report = chair.score([{"id": "x", "text": "a circle and a square"}], {"x": {"objects": ["circle"]}})
    assert report["benchmark"] == "chair" and report["metrics"]["chair_i"] == 0.5
    ev = {"benchmark": "pope", "metric": {}}
    with pytest.raises(ValueError, match=r"eval.benchmark must be one of \('toy', 'toy_video', 'chair'\)"):
        recipe_config._check_eval_metric(ev)
    with pytest.raises(ValueError, match="apply to benchmark chair only"):
        recipe_config._check_eval_metric({"benchmark": "toy", "metric": {"mode": "objhal"}})
    with pytest.raises(ValueError, match="unknown key eval.metric.colour"):
        recipe_config._check_eval_metric({"benchmark": "chair", "metric": {"colour": 1}})


def test_the_cli_choices_come_from_the_registry():
    from halign.recipes import evaluate
    from halign.rewards import score_cli

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    bench = next(a for a in parser._actions if a.dest == "bench")
    assert sorted(bench.choices) == sorted(registry.eval_benches())
    parser = argparse.ArgumentParser()
    score_cli.add_arguments(parser)
    sub = next(a for a in parser._actions if a.dest == "benchmark")
    assert set(sub.choices) == {*registry.score_cli_metrics(), "pope-questions"}


VOCAB = ObjectVocabulary.from_categories({s: [s] for s in ("circle", "square", "star")})


def toy_report(texts: dict[str, str], kind: bool = True) -> dict:
    items = [{"id": i, "text": t, **score_item(t, ["circle"], VOCAB)} for i, t in texts.items()]
    report = {"model": "m", "benchmark": "object_chair", "n": len(items), "metrics": aggregate(items),
              "settings": {}, "per_item": items}
    return registry.describe_report(report) if kind else report


def test_reports_record_their_item_kind_and_stats_read_it():
    report = toy_report({"a": "a circle and a star"})
    assert report["item_kind"] == registry.OBJECTS
    item = report["per_item"][0]
    assert stats.item_counts(item, report["item_kind"]) == stats.item_counts(item) == (1, 1, 2, 1, 1, 5)
    with pytest.raises(ValueError, match="no per-item object counts"):
        stats.item_counts(item, registry.YES_NO)  # a recorded kind is believed, not second-guessed
    chair_item = {"id": "c", "mapped_objects": ["circle", "star"], "hallucinated_objects": ["star"],
                  "ground_truth": ["circle"], "len": 5}
    assert stats.item_counts(chair_item, registry.CHAIR_OBJECTS) == (1, 1, 2, 1, 1, 5)


def test_compare_uses_the_registry_directions_and_kinds():
    before, after = toy_report({"a": "a circle and a star", "b": "a star"}), toy_report({"a": "a circle", "b": "a"})
    assert shown_metrics(before) == ["chair_s", "chair_i", "recall", "mean_len"]
    assert lower_is_better(before, "chair_i") and not lower_is_better(before, "recall")
    rows = compare_reports([before, after], ["before", "after"], n_boot=200)["rows"]
    assert all("ci_low" in r for r in rows)  # object counts: paired intervals
    old = toy_report({"a": "a circle and a star", "b": "a star"}, kind=False)  # before item_kind existed
    assert all("ci_low" in r for r in compare_reports([old, after], ["old", "after"], n_boot=200)["rows"])
    pope = {"benchmark": "toy_pope", "item_kind": registry.YES_NO, "metrics": {"accuracy": 0.5, "f1": 0.4},
            "per_item": [{"id": "q", "prediction": "yes", "label": "no"}]}
    rows = compare_reports([pope, dict(pope, metrics={"accuracy": 1.0, "f1": 1.0})], ["a", "b"], n_boot=200)["rows"]
    assert [r["metric"] for r in rows] == ["accuracy", "f1"] and rows[0]["diff"] == 0.5 and "ci_low" not in rows[0]
