"""Toy-world POPE: question expansion, metrics on hand-made answers, and `halign eval --bench pope` end to
end with the tiny checkpoint."""

from __future__ import annotations

import json

import pytest

from halign.data_gen import toy_world
from halign.recipes.cli import main as cli_main
from halign.rewards.base import Metric
from halign.rewards.toy_pope import ToyPopeMetric, pope_prompts


def test_pope_prompts_one_per_question(tmp_path):
    scenes = toy_world.write_prompts(toy_world.ToyWorldConfig(), "eval", 3, tmp_path / "world")
    prompts = pope_prompts(scenes)
    assert len(prompts) == sum(len(s["pope"]) for s in scenes) > 0
    first, q = prompts[0], scenes[0]["pope"][0]
    assert first["id"] == f"{scenes[0]['id']}-pope0" and first["scene_id"] == scenes[0]["id"]
    assert first["question"] == q["question"] and first["images"] == scenes[0]["images"]
    assert first["kind"] == q["kind"] and first["label"] == q["answer"].lower() == "yes"
    assert len({p["id"] for p in prompts}) == len(prompts)
    with pytest.raises(ValueError, match="no 'pope'"):
        pope_prompts([{"id": "x", "question": "Describe the image."}])


def refs(rows):
    """rows: (kind, label) -> prompt records as pope_prompts makes them."""
    return {f"q{i}": {"id": f"q{i}", "scene_id": "s", "kind": kind, "label": label, "question": "?"}
            for i, (kind, label) in enumerate(rows)}


def test_metric_by_hand():
    references = refs([("random", "yes"), ("random", "no"), ("random", "yes"), ("random", "no"),
                       ("adversarial", "yes"), ("adversarial", "no")])
    answers = ["Yes, there is.", "No.", "There is not a star.", "yes", "yes", "Yes"]
    responses = [{"id": f"q{i}", "text": t} for i, t in enumerate(answers)] + [{"id": "zz", "text": "no"}]
    metric = ToyPopeMetric()
    assert isinstance(metric, Metric)
    out = metric.score(responses, references)
    assert [p["prediction"] for p in out["per_item"]] == ["yes", "no", "no", "yes", "yes", "yes"]
    assert out["missing_ids"] == ["zz"]
    rnd, adv = out["kinds"]["random"], out["kinds"]["adversarial"]
    assert (rnd["tp"], rnd["fp"], rnd["tn"], rnd["fn"]) == (1, 1, 1, 1)
    assert rnd["accuracy"] == rnd["precision"] == rnd["recall"] == rnd["f1"] == rnd["yes_ratio"] == 0.5
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (1, 1, 0, 0)
    assert adv["accuracy"] == 0.5 and adv["precision"] == 0.5 and adv["recall"] == 1.0
    assert adv["f1"] == pytest.approx(2 / 3) and adv["yes_ratio"] == 1.0
    m = out["metrics"]
    assert list(out["kinds"]) == ["random", "adversarial"] and m["n"] == 6
    assert m["accuracy"] == 0.5 and m["recall"] == 0.75 and m["f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["adversarial_yes_ratio"] == 1.0 and "popular_f1" not in m


def test_eval_bench_pope_with_tiny_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "eval" / "pope.json"
    args = ["eval", "--model", str(tiny_checkpoint), "--bench", "pope", "--n", "3", "--out", str(out),
            "--max-new-tokens", "8"]
    assert cli_main(args) == 0
    report = json.loads(out.read_text())
    scenes = toy_world.make_scenes(toy_world.ToyWorldConfig(), "eval", 3)
    questions = [q for s in scenes for q in s.questions]
    assert report["benchmark"] == "toy_pope" and report["n"] == len(questions) == len(report["per_item"])
    assert [p["question"] for p in report["per_item"]] == [q["question"] for q in questions]
    assert [p["label"] for p in report["per_item"]] == [q["answer"].lower() for q in questions]
    assert all(p["prediction"] in ("yes", "no") for p in report["per_item"])
    assert set(report["kinds"]) <= {"random", "popular", "adversarial"} and report["kinds"]
    # The report's numbers are the metric of its own per-item answers (greedy: rerunnable).
    again = ToyPopeMetric().score([{"id": p["id"], "text": p["text"]} for p in report["per_item"]],
                                  {p["id"]: p for p in report["per_item"]})
    assert again["metrics"] == report["metrics"]
    assert report["settings"]["decoding"] == "greedy"
    assert "pope: n=" in capsys.readouterr().out


def test_eval_bench_chair_generates_then_scores(tmp_path, tiny_checkpoint):
    """`halign eval --bench chair`: the COCO path end to end on toy images with a hand-written ground truth."""
    import json

    from halign.data_gen import toy_world
    from halign.recipes.cli import main

    records = toy_world.write_prompts(toy_world.ToyWorldConfig(), "eval", 3, tmp_path / "world")
    prompts = [{"id": str(100 + i), "images": r["images"], "question": "Describe the image."}
               for i, r in enumerate(records)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (tmp_path / "gt.json").write_text(json.dumps({"100": ["dog"], "101": ["cat", "bowl"]}))  # 102 has none
    synonyms = tmp_path / "syn.txt"
    synonyms.write_text("dog, doggy\ncat, kitty\nbowl\n")
    out = tmp_path / "chair.json"
    assert main(["eval", "--model", str(tiny_checkpoint), "--bench", "chair", "--prompts",
                 str(tmp_path / "prompts.jsonl"), "--gt", str(tmp_path / "gt.json"), "--synonyms", str(synonyms),
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "chair" and report["n"] == 2
    assert report["missing_ids"] == ["102"]
    # Toy captions mention no COCO object: nothing hallucinated, nothing covered.
    assert report["metrics"]["chair_i"] == 0.0 and report["metrics"]["recall"] == 0.0


def test_eval_chair_without_prompts_is_a_clear_error(tiny_checkpoint, capsys):
    from halign.recipes.cli import main

    assert main(["eval", "--model", str(tiny_checkpoint), "--bench", "chair", "--out", "x.json"]) == 2
    assert "--prompts" in capsys.readouterr().err
