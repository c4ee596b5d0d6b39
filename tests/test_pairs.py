import random

import pytest

from halign.data_gen.pairs import PairsConfig, build_pairs, run, select_pairs, to_dataset


def cand(cid, score, text=None, covered=None, **extra):
    judgment = {"candidate_id": cid, "score": score, "judge": "grounding", **extra}
    if covered is not None:
        judgment["covered"] = covered
    return {"id": cid, "prompt_id": "p", "text": text or f"text {cid}", "score": score, "judgment": judgment}


def test_best_vs_worst_and_ties_dropped():
    cfg = PairsConfig(strategy="best_vs_worst", min_gap=0.5)
    pairs, _ = select_pairs(cfg, [cand("a", 1.0), cand("b", 3.0), cand("c", -1.0)], random.Random(0))
    assert [(c["id"], r["id"]) for c, r in pairs] == [("b", "c")]
    pairs, dropped = select_pairs(cfg, [cand("a", 2.0), cand("b", 2.0)], random.Random(0))
    assert pairs == [] and dropped["tie"] == 1


def test_gap_strategy_respects_min_gap_and_sample_num():
    cfg = PairsConfig(strategy="gap", min_gap=2.0, sample_num=2, keep_coverage=False)
    scored = [cand("a", 4.0), cand("b", 3.0), cand("c", 1.0), cand("d", 0.0)]
    pairs, dropped = select_pairs(cfg, scored, random.Random(0))
    # Largest gaps first: a-d (4), then a-c (3) or b-d (3); each rejected used once.
    assert len(pairs) == 2
    assert (pairs[0][0]["id"], pairs[0][1]["id"]) == ("a", "d")
    assert all(c["score"] - r["score"] >= 2.0 for c, r in pairs)
    assert len({r["id"] for _, r in pairs}) == 2


def test_keep_coverage_drops_pairs_that_teach_saying_less():
    cfg = PairsConfig(strategy="gap", min_gap=1.0, sample_num=5, keep_coverage=True)
    scored = [cand("short", 1.0, covered=["circle"]), cand("full_hall", 0.0, covered=["circle", "square"]),
              cand("full", 2.0, covered=["circle", "square"])]
    pairs, dropped = select_pairs(cfg, scored, random.Random(0))
    ids = {(c["id"], r["id"]) for c, r in pairs}
    assert ("short", "full_hall") not in ids and dropped["coverage_loss"] == 1
    assert ("full", "full_hall") in ids


def test_length_ratio_filter():
    cfg = PairsConfig(strategy="best_vs_worst", min_length_ratio=0.8)
    scored = [cand("a", 2.0, text="one two"), cand("b", 0.0, text="one two three four five")]
    pairs, dropped = select_pairs(cfg, scored, random.Random(0))
    assert pairs == [] and dropped["length"] == 1


def test_corrected_strategy_uses_judge_rewrite():
    cfg = PairsConfig(strategy="corrected")
    scored = [cand("a", 0.0, text="a circle and a star", corrected="a circle"), cand("b", 2.0, text="x")]
    pairs, _ = select_pairs(cfg, scored, random.Random(0))
    assert len(pairs) == 1 and pairs[0][0]["text"] == "a circle" and pairs[0][1]["id"] == "a"


def test_bad_config_names_key():
    with pytest.raises(ValueError, match="strategy"):
        PairsConfig(strategy="nope")
    with pytest.raises(ValueError, match="min_gap"):
        PairsConfig(min_gap=0)


def test_build_pairs_to_trl_dataset(tmp_path):
    from PIL import Image

    img = tmp_path / "p.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(img)
    prompts = {"p": {"id": "p", "images": [str(img)], "question": "Describe the image."}}
    candidates = [{"id": "p#0", "prompt_id": "p", "text": "good"}, {"id": "p#1", "prompt_id": "p", "text": "bad"},
                  {"id": "p#2", "prompt_id": "p", "text": "failed"}]
    judgments = [{"candidate_id": "p#0", "score": 2.0, "judge": "g"}, {"candidate_id": "p#1", "score": 0.0, "judge": "g"},
                 {"candidate_id": "p#2", "score": None, "judge": "g", "error": "timeout"}]
    rows, summary = build_pairs(PairsConfig(), prompts, candidates, judgments)
    assert summary["pairs"] == 1 and summary["candidates_without_judgment"] == 1
    ds = to_dataset(rows)
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": "Describe the image."}]
    assert row["chosen"][0]["content"] == "good" and row["rejected"][0]["content"] == "bad"
    assert row["images"][0].size == (8, 8)
    assert row["chosen_score"] == 2.0 and row["judge"] == "g"


def test_run_with_no_pairs_is_a_clear_error(tmp_path):
    import json

    (tmp_path / "prompts.jsonl").write_text(json.dumps({"id": "p", "images": [], "question": "q"}) + "\n")
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "p#0", "prompt_id": "p", "text": "x"}) + "\n")
    (tmp_path / "j.jsonl").write_text(json.dumps({"candidate_id": "p#0", "score": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no preference pairs"):
        run(PairsConfig(), tmp_path / "j.jsonl", tmp_path / "c.jsonl", tmp_path / "prompts.jsonl", tmp_path / "out")


def test_balance_lengths_keeps_as_many_shorter_as_longer_chosen_answers():
    # Three prompts whose hallucinating answer adds an item (chosen shorter), one whose chosen answer names
    # one more true object (chosen longer), one yes/no pair of equal length.
    prompts = {f"p{i}": {"id": f"p{i}", "question": "Describe the image.", "images": []} for i in range(5)}
    texts = [("a star.", "a star and a circle."), ("a square.", "a square and a cross."),
             ("a red star.", "a red star and a blue star."), ("a star and a circle.", "a star."), ("Yes.", "No.")]
    candidates, judgments = [], []
    for i, (good, bad) in enumerate(texts):
        for j, (text, score) in enumerate(((good, 3.0), (bad, 0.0))):
            candidates.append({"id": f"p{i}-{j}", "prompt_id": f"p{i}", "text": text})
            judgments.append({"candidate_id": f"p{i}-{j}", "score": score, "judgment": {}})
    plain, _ = build_pairs(PairsConfig(), prompts, candidates, judgments)
    rows, summary = build_pairs(PairsConfig(balance_lengths=True), prompts, candidates, judgments)
    assert len(plain) == 5 and len(rows) == 3
    assert summary["length_balance"] == {"chosen_shorter": 3, "chosen_longer": 1, "same_length": 1}
    assert summary["dropped"]["length_balance"] == 2
    words = [(len(r["chosen"][0]["content"].split()), len(r["rejected"][0]["content"].split())) for r in rows]
    assert sum(c < r for c, r in words) == sum(c > r for c, r in words) == 1
    assert {r["prompt_id"] for r in rows} >= {"p3", "p4"}  # the minority side and equal lengths all stay
