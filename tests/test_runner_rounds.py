"""`halign run` with `rounds: 2`: on-policy rounds in RUN/round_{r}/, rounds.json and its plot, and reruns
that skip finished rounds and redo, from the earliest round a change affects, only what it affects."""

import json
from pathlib import Path

import pytest

from test_runner import TINY_TOY, TOY  # tests/ is on sys.path (pytest's default "prepend" import mode)

from halign.recipes.runner import run_recipe

STAGES = ["sample", "judge", "pairs", "train", "eval"]
ROUNDS2 = TINY_TOY + ["rounds=2"]


def _run(run: Path, extra: list[str] | None = None) -> dict:
    return run_recipe(TOY, ROUNDS2 + (extra or []), out=run, progress=False, log=lambda *_: None)


def _folders(rounds, stages) -> list[str]:
    return [f"round_{r}/{s}" for r in rounds for s in stages]


def _keys(run: Path) -> dict:
    return {f: json.loads((run / f / "stage_key.json").read_text())["key"] for f in _folders((1, 2), STAGES)}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_rounds_are_on_policy_and_a_rerun_redoes_only_what_changed(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    first = _run(run)
    assert first["ran"] == _folders((1, 2), STAGES)
    # Fresh toy scenes each round; one eval set for every round.
    prompts = [{r["id"] for r in _records(run / f"round_{i}" / "sample" / "prompts.jsonl")} for i in (1, 2)]
    assert len(prompts[1]) == 8 and prompts[0].isdisjoint(prompts[1])
    evals = [[r["id"] for r in json.loads((run / f"round_{i}/eval/report_after.json").read_text())["per_item"]]
             for i in (1, 2)]
    assert evals[0] == evals[1] and len(evals[0]) == 4
    # Round 2 samples with round 1's merged policy and trains a fresh adapter on it.
    merged = (run / "round_1" / "train" / "merged").resolve()
    assert {c["model"] for c in _records(run / "round_2" / "sample" / "candidates.jsonl")} == {str(merged)}
    adapter = json.loads((run / "round_2" / "train" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(merged)
    # Per-round metrics, the base model's before round 1, a plot; the exposed report is the last round's.
    summary = json.loads((run / "rounds.json").read_text())
    assert [e["round"] for e in summary["rounds"]] == [1, 2]
    assert summary["before"]["n"] == 4 and all(e["metrics"]["n"] == 4 for e in summary["rounds"])
    assert summary["final_report"] == first["report"] == str(run / "round_2" / "eval" / "report_after.json")
    assert summary["final_policy"] == first["policy"] == str((run / "round_2" / "train" / "merged").resolve())
    assert (run / "rounds.png").stat().st_size > 0
    assert (run / "round_2" / "eval" / "compare" / "compare.md").exists()  # round 2 against the base model
    keys = _keys(run)
    stamp = {p: p.stat().st_mtime_ns for p in run.glob("round_*/**/*") if p.is_file()}

    assert _run(run)["ran"] == []
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rewritten

    # A judge change reruns round 1 from its judge on, and all of round 2 (its policy changed).
    third = _run(run, ["judge.hallucination_weight=3"])
    assert third["ran"] == _folders((1,), STAGES[1:]) + _folders((2,), STAGES)
    new = _keys(run)
    assert [f for f in new if new[f] == keys[f]] == ["round_1/sample"]
    for unchanged in ("round_1/sample/candidates.jsonl", "round_1/eval/report_before.json"):
        assert (run / unchanged).stat().st_mtime_ns == stamp[run / unchanged]

    # Nothing chains from an eval: an eval change reruns each round's eval only.
    fourth = _run(run, ["judge.hallucination_weight=3", "eval.max_new_tokens=24"])
    assert fourth["ran"] == ["round_1/eval", "round_2/eval"]
    log = _records(run / "runs.jsonl")
    assert [entry["ran"] for entry in log] == [first["ran"], [], third["ran"], fourth["ran"]]


def test_full_fine_tuning_rounds_chain_checkpoints(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    result = _run(run, ["train.peft=null", "eval=null"])
    assert result["ran"] == _folders((1, 2), STAGES[:4])
    # No adapter to merge: round 2 starts from round 1's trained checkpoint itself.
    manifest = json.loads((run / "round_2" / "train" / "manifest.json").read_text())
    assert manifest["mode"] == "full" and manifest["config"]["model"] == str((run / "round_1" / "train").resolve())
    assert not (run / "round_1" / "train" / "merged").exists()
    summary = json.loads((run / "rounds.json").read_text())
    assert [e["round"] for e in summary["rounds"]] == [1, 2] and summary["final_report"] is None
    assert summary["final_policy"] == str((run / "round_2" / "train").resolve()) and not (run / "rounds.png").exists()


def test_toy_rounds_draw_fresh_scenes_and_a_jsonl_pool_is_reused():
    from halign.recipes import config, rounds

    def resolve(recipe, overrides):
        return config.resolve(config.apply_overrides(config.load_recipe(recipe), overrides))

    toy = resolve(TOY, ["rounds=3", "source.n=8", "source.start=5"])
    assert rounds.round_config(toy, 1) == toy  # one-round runs keep their keys
    assert [rounds.round_config(toy, r)["source"]["start"] for r in (1, 2, 3)] == [5, 13, 21]
    assert [rounds.round_config(toy, r)["train"]["dpo"]["seed"] for r in (1, 2, 3)] == [0, 1, 2]
    jsonl = resolve(TOY.parent / "llava15_7b_rlaifv_lora.yaml", [])
    assert all(rounds.round_config(jsonl, r)["source"] == jsonl["source"] for r in (2, 3, 4))


def test_rounds_are_gated_on_validation_scenes_and_the_kept_round_is_named(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    result = _run(run, ["gate.val_scenes=6"])
    summary = json.loads((run / "rounds.json").read_text())
    assert [h["round"] for h in summary["validation"]] == [0, 1, 2]
    assert all(h["n"] == 6 and "pope_accuracy" in h for h in summary["validation"])
    kept = summary["kept_round"]
    assert summary["gate"]["chosen_round"] == kept and result["kept_policy"] == summary["kept_policy"]
    assert summary["kept_policy"] == summary["validation"][kept]["policy"]
    # Validation scenes are neither eval (test) scenes nor training scenes.
    val = {r["id"] for r in _records(run / "validation" / "source" / "prompts.jsonl")}
    test = {r["id"] for r in _records(run / "round_1" / "eval" / "source" / "prompts.jsonl")}
    assert val and all(i.startswith("toy-val-") for i in val) and not val & test
    # A rerun scores nothing again.
    stamp = (run / "round_2" / "validation" / "scores.json").stat().st_mtime_ns
    assert _run(run, ["gate.val_scenes=6"])["ran"] == []
    assert (run / "round_2" / "validation" / "scores.json").stat().st_mtime_ns == stamp


def test_gate_settings_are_checked_at_start():
    from halign.recipes import config

    def resolve(overrides, recipe=TOY):
        return config.resolve(config.apply_overrides(config.load_recipe(recipe), overrides))

    assert resolve(["rounds=1"])["gate"] is None  # one round: nothing to choose
    assert resolve(["rounds=2", "gate=null"])["gate"] is None  # off: the last round is kept
    assert resolve(["rounds=2"])["gate"] == {"metric": "chair_i", "recall_tolerance": 0.03, "pope_tolerance": 0.01,
                                             "confidence": 0.95, "val_scenes": 200}  # the recipe's own gate section
    assert resolve(["rounds=2", "gate={}"])["gate"] == {}  # rounds and an eval: the gate is on, rule defaults
    with pytest.raises(ValueError, match="unknown key gate.tolerance"):
        resolve(["rounds=2", "gate.tolerance=0.1"])
    with pytest.raises(ValueError, match="gate: gate metric"):
        resolve(["rounds=2", "gate.metric=recall"])
    with pytest.raises(ValueError, match="gate.source is required"):
        resolve(["gate.source=null"], TOY.parent / "llava15_7b_rlaifv_lora.yaml")
