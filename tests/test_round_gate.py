"""The round gate: which RLAIF round is kept, by a declared rule over validation scores, on scenes that are
neither training nor test scenes."""

import pytest

from halign.data_gen import toy_world
from halign.recipes.rlaif import RlaifConfig, eval_sets
from halign.recipes.round_gate import GateRule, choose_round, paired_change_se


def entry(r, chair_i, recall=0.95, pope=0.97, chair_s=None):
    return {"round": r, "chair_i": chair_i, "chair_s": chair_s if chair_s is not None else 2 * chair_i,
            "recall": recall, "pope_accuracy": pope}


START = entry(0, 0.17, recall=0.98, pope=0.98)


def test_the_lowest_chair_within_tolerance_wins_even_when_it_is_not_the_last_round():
    history = [START, entry(1, 0.05), entry(2, 0.01, pope=0.975), entry(3, 0.02)]
    gate = choose_round(history, GateRule())
    assert gate["chosen_round"] == 2 and "round 2" in gate["reason"]
    assert gate["passed_over"] == {}


def test_a_round_that_trades_pope_or_recall_for_chair_is_passed_over():
    history = [START, entry(1, 0.04), entry(2, 0.001, pope=0.95), entry(3, 0.002, recall=0.90)]
    gate = choose_round(history, GateRule())
    assert gate["chosen_round"] == 1
    assert set(gate["passed_over"]) == {"2", "3"}
    assert "POPE accuracy 0.950" in gate["passed_over"]["2"] and "recall 0.900" in gate["passed_over"]["3"]
    # Looser tolerances admit them; the rule is what decides.
    assert choose_round(history, GateRule(pope_tolerance=0.05, recall_tolerance=0.1))["chosen_round"] == 2


def test_when_no_round_passes_the_start_is_kept_and_said():
    history = [START, entry(1, 0.01, pope=0.90), entry(2, 0.3)]
    gate = choose_round(history, GateRule())
    assert gate["chosen_round"] == 0 and "before alignment is kept" in gate["reason"]


def test_ties_go_to_higher_recall_then_the_earlier_round():
    history = [START, entry(1, 0.02, recall=0.96), entry(2, 0.02, recall=0.97), entry(3, 0.02, recall=0.97)]
    assert choose_round(history, GateRule())["chosen_round"] == 2
    assert choose_round(history, GateRule(metric="chair_s"))["chosen_round"] == 2


def test_the_last_round_is_kept_when_it_is_best_and_the_chosen_round_is_never_worse_than_the_last():
    history = [START, entry(1, 0.05), entry(2, 0.01)]
    gate = choose_round(history, GateRule())
    assert gate["chosen_round"] == 2 and "(the last)" in gate["reason"]
    for chair in (0.0, 0.03, 0.2):  # whatever the last round scores, the kept one is at least as good by the rule
        hist = history + [entry(3, chair)]
        kept = hist[choose_round(hist, GateRule())["chosen_round"]]
        assert kept["chair_i"] <= chair


def test_a_drop_within_tolerance_by_point_estimate_but_not_with_confidence_is_passed_over():
    # Round 2 loses 0.9 POPE points against a 1-point tolerance; its paired standard error says the true
    # drop may well exceed the tolerance on new scenes, so the gate prefers round 1.
    history = [START, entry(1, 0.08, pope=0.982), {**entry(2, 0.02, pope=0.971), "pope_accuracy_se": 0.005}]
    gate = choose_round(history, GateRule())
    assert gate["chosen_round"] == 1
    assert "POPE accuracy 0.971 (lower bound 0.963) < 0.980 - 0.01" == gate["passed_over"]["2"]
    assert choose_round(history, GateRule(confidence=0.5))["chosen_round"] == 2  # point estimates
    assert "95% lower confidence bound" in gate["rule"]


def test_paired_change_se_matches_the_textbook_formulas():
    import math
    import random

    rng = random.Random(0)
    # Yes/no questions: the paired difference of two proportions over n items, sd(d) / sqrt(n).
    base = [(float(rng.random() < 0.9), 1.0) for _ in range(500)]
    other = [(v if rng.random() < 0.95 else 1 - v, 1.0) for v, _ in base]
    diffs = [o - b for (b, _), (o, _) in zip(base, other)]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    assert paired_change_se(base, other) == pytest.approx(sd / math.sqrt(len(diffs)))
    # Recall (a ratio of sums over the same ground truth): weights are each caption's ground-truth objects.
    truth = [rng.randint(1, 4) for _ in range(200)]
    named_a, named_b = [rng.randint(0, t) for t in truth], [rng.randint(0, t) for t in truth]
    d = [b - a for a, b in zip(named_a, named_b)]
    m = sum(d) / len(d)
    expected = math.sqrt(len(d) * sum((x - m) ** 2 for x in d) / (len(d) - 1)) / sum(truth)
    assert paired_change_se(list(zip(named_a, truth)), list(zip(named_b, truth))) == pytest.approx(expected)
    assert paired_change_se(base, base) == 0.0
    with pytest.raises(ValueError, match="same weights"):
        paired_change_se([(1, 2)], [(1, 3)])
    with pytest.raises(ValueError, match="paired items differ"):
        paired_change_se([(1, 1)], [])


def test_bad_rules_and_histories_are_refused():
    with pytest.raises(ValueError, match="gate metric"):
        GateRule(metric="recall")
    with pytest.raises(ValueError, match="tolerances"):
        GateRule(pope_tolerance=-0.1)
    with pytest.raises(ValueError, match="confidence"):
        GateRule(confidence=0.3)
    with pytest.raises(ValueError, match="round 0"):
        choose_round([entry(1, 0.1)], GateRule())
    with pytest.raises(ValueError, match="unknown gate keys"):
        RlaifConfig(model="toy", gate={"pope_tol": 0.1})
    with pytest.raises(ValueError, match="both eval_prompts"):
        RlaifConfig(model="toy", eval_prompts="test.jsonl")


def test_validation_scenes_are_neither_test_nor_training_scenes(tmp_path):
    cfg = RlaifConfig(model="toy", out=str(tmp_path), rounds=2, prompts_per_round=40, eval_n=30, val_n=30)
    test, val = eval_sets(cfg, tmp_path)
    assert len(test) == len(val) == 30
    world = toy_world.ToyWorldConfig()
    training = toy_world.signatures(world, "sft", cfg.toy_checkpoint_config().sft_scenes)
    training |= toy_world.signatures(world, "dpo", 80)
    val_sigs = {toy_world.record_signature(r) for r in val}
    assert not val_sigs & training
    assert not val_sigs & {toy_world.record_signature(r) for r in test}
    assert all(r["id"].startswith("toy-val-") for r in val) and all(r.get("pope") for r in val)


def test_given_validation_records_must_not_share_ids_with_the_test_records(tmp_path):
    import json

    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "Describe.", "objects": ["cat"]}) + "\n")
    cfg = RlaifConfig(model="m", out=str(tmp_path), eval_prompts=str(path), val_prompts=str(path))
    with pytest.raises(ValueError, match="share ids"):
        eval_sets(cfg, tmp_path)
