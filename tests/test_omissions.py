"""Omission negatives (data_gen/omissions.py): the copy, which answers get one, and the round that judges them."""

import json

from halign.data_gen.omissions import drop_last_item, omission_candidates


def test_drop_last_item():
    assert drop_last_item("a red star and a red triangle.") == "a red star."
    assert drop_last_item("a yellow circle, a green square and a blue star.") == "a yellow circle and a green square."
    assert drop_last_item("a cat, a dog") == "a cat"
    assert drop_last_item("A cat sits. A dog runs.") == "A cat sits."
    assert drop_last_item("a red star.") is None and drop_last_item("Yes.") is None


def test_one_copy_per_prompt_of_its_best_clean_answer():
    candidates = [
        {"id": "p#0", "prompt_id": "p", "text": "a red star and a blue circle."},
        {"id": "p#1", "prompt_id": "p", "text": "a red star, a blue circle and a green cross."},  # hallucinated
        {"id": "p#2", "prompt_id": "p", "text": "a blue circle."},
        {"id": "q#0", "prompt_id": "q", "text": "Yes."},
        {"id": "r#0", "prompt_id": "r", "text": "a red star and a red star."},  # its copy exists already
        {"id": "r#1", "prompt_id": "r", "text": "a red star."},
    ]
    judgments = [
        {"candidate_id": "p#0", "score": 2.0, "hallucinated": []},
        {"candidate_id": "p#1", "score": 0.0, "hallucinated": ["cross"]},
        {"candidate_id": "p#2", "score": 1.0, "hallucinated": []},
        {"candidate_id": "q#0", "score": 1.0, "hallucinated": [], "qa": True},
        {"candidate_id": "r#0", "score": 1.0, "hallucinated": []},
        {"candidate_id": "r#1", "score": 1.0, "hallucinated": []},
    ]
    copies = omission_candidates(candidates, judgments)
    # p: from its best clean answer (not the hallucinated one); q: yes/no, none; r: the copy exists already.
    assert [(c["id"], c["text"], c["omitted_from"], c["origin"]) for c in copies] == [
        ("p#omission", "a red star.", "p#0", "omission")]


def test_round_with_omission_negatives(tmp_path, tiny_checkpoint):
    from test_rlaif import tiny_cfg

    from halign.recipes.rlaif import run_rlaif

    cfg = tiny_cfg(tmp_path / "r", tiny_checkpoint)
    cfg.rounds, cfg.omission_negatives = 1, True
    run_rlaif(cfg, progress=False, log=lambda *_: None)
    folder = tmp_path / "r" / "round_1" / "omissions"
    copies = [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]
    judged = [json.loads(line) for line in (folder / "judgments.jsonl").read_text().splitlines()]
    assert copies and {c["origin"] for c in copies} == {"omission"}
    assert {j["candidate_id"] for j in judged} == {c["id"] for c in copies}
    pairs = json.loads((tmp_path / "r" / "round_1" / "pairs" / "manifest.json").read_text())
    assert str(folder / "all_judgments.jsonl") in json.dumps(pairs)  # the pairs stage read the merged files
