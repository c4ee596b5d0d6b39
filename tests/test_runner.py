"""`halign run`: every shipped recipe validates; tiny runs skip what is unchanged and redo what changed."""

import json
import time
from pathlib import Path

import pytest

import halign.recipes
from halign.recipes.cli import main
from halign.recipes.runner import run_recipe

RECIPES = sorted(Path(halign.recipes.__file__).parent.rglob("*.yaml"))
TOY = Path(halign.recipes.__file__).parent / "toy_world.yaml"
TINY_CKPT = "toy_checkpoint={sft_scenes: 120, sft_steps: 40, batch_size: 16}"  # = demo.QUICK_CHECKPOINT
TINY_TOY = [TINY_CKPT, "source.n=8", "sample.k=2", "eval.source.n=4", "train.dpo.num_train_epochs=1",
            "train.dpo.per_device_train_batch_size=8", "sample.max_new_tokens=32", "eval.max_new_tokens=32"]
# A real-checkpoint recipe shrunk onto the toy world: same stage chain, tiny model, offline judge.
TINY_REAL = ["model=toy", TINY_CKPT, "rounds=1", "source={type: toy_world, split: dpo, n: 8}", "sample.k=2",
             "sample.dtype=float32", "sample.max_new_tokens=32", "judge={name: grounding, vocabulary: toy}",
             "pairs={strategy: gap, min_gap: 1.0, sample_num: 2}", "train.dtype=float32",
             "train.accelerate_config=null", "train.dpo.num_train_epochs=1", "train.dpo.per_device_train_batch_size=8",
             "train.dpo.gradient_accumulation_steps=1", "train.dpo.activation_checkpointing=false",
             "train.dpo.bf16=false", "eval=null"]


def test_recipes_are_found():
    names = {p.name for p in RECIPES}
    assert {"toy_world.yaml", "llava15_7b_rlaifv_lora.yaml", "qwen25vl_7b_full_zero3.yaml",
            "llava_hound_video.yaml", "mdpo_toy.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_dry_runs(recipe, tmp_path, halign_cache, capsys):
    first = recipe.read_text().splitlines()[0]
    assert first.startswith(f"# halign run recipes/{recipe.name}") and "hardware" in recipe.read_text().split("\n\n")[0]
    # --dry-run validates every key and prints the plan without loading (or building) a model.
    assert main(["run", str(recipe), "--dry-run", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "plan:" in out and all(f"  {s}" in out for s in ("sample", "judge", "pairs", "train"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, key", [
    ("sample.temprature=0.5", "sample.temprature"), ("judge.hallucination_wieght=3", "judge.hallucination_wieght"),
    ("train.dpo.betta=0.2", "betta"), ("train.peft.rank=8", "rank"), ("pairs.min_gapp=2", "pairs.min_gapp"),
    ("modle=x", "recipe.modle"), ("source.size=3", "source.size"), ("eval.source.type=coco", "eval.source.type"),
])
def test_unknown_keys_fail_at_start_naming_the_key(override, key, capsys):
    assert main(["run", str(TOY), override, "--dry-run"]) == 2
    assert key in capsys.readouterr().err


@pytest.mark.parametrize("override, words", [
    ("sample.temperature=0", "greedy"), ("pairs.strategy=corrected", "corrected"),
    ("train.dpo.loss_weights=[1.0]", "loss_weights"), ("rounds=0", "rounds"),
])
def test_impossible_combinations_fail(override, words):
    with pytest.raises(ValueError, match=words):
        run_recipe(TOY, [override], dry_run=True, log=lambda *_: None)


def test_declared_but_unimplemented_features_fail_only_at_execution(tmp_path):
    mdpo = TOY.parent / "mdpo_toy.yaml"
    assert run_recipe(mdpo, dry_run=True, log=lambda *_: None)["notes"]
    with pytest.raises(ValueError, match="mDPO objective is not implemented"):
        run_recipe(mdpo, out=tmp_path / "m", log=lambda *_: None)
    with pytest.raises(ValueError, match="rounds are not implemented"):
        run_recipe(TOY, ["rounds=4"], out=tmp_path / "r", log=lambda *_: None)
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()


def _keys(run: Path) -> dict:
    return {s: json.loads((run / s / "stage_key.json").read_text())["key"] for s in
            ("sample", "judge", "pairs", "train", "eval")}


def test_rerun_skips_and_a_judge_change_reruns_downstream(tmp_path, tiny_checkpoint):
    run = tmp_path / "run"
    first = run_recipe(TOY, TINY_TOY, out=run, progress=False, log=lambda *_: None)
    assert first["ran"] == ["sample", "judge", "pairs", "train", "eval"]
    for name in ("report_before.json", "report_after.json", "compare/compare.md", "compare/compare.png"):
        assert (run / "eval" / name).exists()
    keys = _keys(run)
    # Stage folders only: recipe.yaml and runs.jsonl are rewritten / appended on every invocation.
    stamp = {p: p.stat().st_mtime_ns for p in run.glob("*/**/*") if p.is_file()}

    t0 = time.time()
    second = run_recipe(TOY, TINY_TOY, out=run, progress=False, log=lambda *_: None)
    assert second["ran"] == [] and time.time() - t0 < 20
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing rewritten

    third = run_recipe(TOY, TINY_TOY + ["judge.hallucination_weight=3"], out=run, progress=False, log=lambda *_: None)
    assert third["ran"] == ["judge", "pairs", "train", "eval"]
    new = _keys(run)
    assert new["sample"] == keys["sample"] and all(new[s] != keys[s] for s in ("judge", "pairs", "train", "eval"))
    assert (run / "sample" / "candidates.jsonl").stat().st_mtime_ns == stamp[run / "sample" / "candidates.jsonl"]
    # The base model's report does not depend on the judge: reused, not recomputed.
    assert (run / "eval" / "report_before.json").stat().st_mtime_ns == stamp[run / "eval" / "report_before.json"]
    judgments = [json.loads(line) for line in (run / "judge" / "judgments.jsonl").read_text().splitlines()]
    assert any(j["hallucinated"] for j in judgments)
    log = [json.loads(line) for line in (run / "runs.jsonl").read_text().splitlines()]
    assert [entry["ran"] for entry in log] == [first["ran"], [], third["ran"]]


@pytest.mark.parametrize("recipe", ["llava15_7b_rlaifv_lora.yaml", "qwen25vl_7b_full_zero3.yaml",
                                    "llava_hound_video.yaml"])
def test_real_recipes_run_every_stage_on_a_tiny_model(recipe, tmp_path, tiny_checkpoint):
    result = run_recipe(TOY.parent / recipe, TINY_REAL, out=tmp_path / "run", progress=False, log=lambda *_: None)
    assert result["ran"] == ["sample", "judge", "pairs", "train"]
    manifest = json.loads((tmp_path / "run" / "train" / "manifest.json").read_text())
    assert manifest["mode"] == ("full" if "full" in recipe else "lora") and manifest["steps"] > 0
