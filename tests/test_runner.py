"""`halign run`: every shipped recipe validates and runs every stage on a tiny model; tiny runs skip what is
unchanged and redo what changed. Several rounds: tests/test_runner_rounds.py."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

import halign.recipes
from halign.recipes.cli import main
from halign.recipes.runner import run_recipe

RECIPES = sorted(Path(halign.recipes.__file__).parent.rglob("*.yaml"))
TOY = Path(halign.recipes.__file__).parent / "toy_world.yaml"
TINY_CKPT = "toy_checkpoint={sft_scenes: 120, sft_steps: 40, batch_size: 16}"  # = demo.QUICK_CHECKPOINT
TINY_TOY = [TINY_CKPT, "source.n=8", "sample.k=2", "eval.source.n=4", "train.dpo.num_train_epochs=1",
            "train.dpo.per_device_train_batch_size=8", "sample.max_new_tokens=32", "eval.max_new_tokens=32"]
# A real-checkpoint recipe shrunk onto the toy world: same stage chain, tiny model, offline judge, and its
# eval benchmark on 4 held-out toy scenes.
TINY_REAL = ["model=toy", TINY_CKPT, "source={type: toy_world, split: dpo, n: 8}", "sample.k=2",
             "sample.dtype=float32", "sample.max_new_tokens=32", "judge={name: grounding, vocabulary: toy}",
             "pairs={strategy: gap, min_gap: 1.0, sample_num: 2}", "train.dtype=float32",
             "train.accelerate_config=null", "train.dpo.num_train_epochs=1", "train.dpo.per_device_train_batch_size=8",
             "train.dpo.gradient_accumulation_steps=1", "train.dpo.activation_checkpointing=false",
             "train.dpo.bf16=false", "eval.source={type: toy_world, split: eval, n: 4, exclude_seen: true}",
             "eval.max_new_tokens=32", "eval.batch_size=8", "gate.source=null"]
# CHAIR over the toy world's object words (the COCO synonym lists live outside the repository).
TOY_CHAIR = "eval.metric.synonyms=[[circle], [square], [triangle], [diamond], [star], [cross]]"
STAGES = ["sample", "judge", "pairs", "train", "eval"]


def tiny_overrides(recipe: Path) -> list[str]:
    """Overrides that run a recipe's every stage on CPU in seconds; at most 2 rounds."""
    raw = yaml.safe_load(recipe.read_text())
    rounds = [f"rounds={min(raw.get('rounds', 1), 2)}"]
    if raw["model"] == "toy":
        return TINY_TOY + rounds
    chair = (raw.get("eval") or {}).get("benchmark") == "chair"
    return TINY_REAL + rounds + ([TOY_CHAIR] if chair else [])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_checkpoint):
    """toy_world.yaml with TINY_TOY, run once for the module: the walk below and the rerun test share it."""
    run = tmp_path_factory.mktemp("toy_run") / "run"
    return run, run_recipe(TOY, tiny_overrides(TOY), out=run, progress=False, log=lambda *_: None)


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
    rounds = yaml.safe_load(recipe.read_text()).get("rounds", 1)
    assert (f"round {rounds} of {rounds} (round_{rounds}/" in out) == (rounds > 1)  # every round is planned
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


def test_mdpo_and_quantization_settings_are_checked_at_start_up(tmp_path):
    mdpo = TOY.parent / "mdpo_toy.yaml"
    plan = run_recipe(mdpo, dry_run=True, log=lambda *_: None)
    assert plan["notes"] == [] and plan["config"]["train"]["mdpo"] is True
    plan = run_recipe(TOY, ["train.mdpo={crop_area: [0.1, 0.2]}"], dry_run=True, log=lambda *_: None)
    assert plan["config"]["train"]["mdpo"] == {"crop_area": [0.1, 0.2]}
    with pytest.raises(ValueError, match="unknown mdpo key.*crop"):
        run_recipe(TOY, ["train.mdpo={crop: 0.2}"], dry_run=True, log=lambda *_: None)
    with pytest.raises(ValueError, match="needs peft"):
        run_recipe(TOY, ["train.quantization=true", "train.peft=null"], dry_run=True, log=lambda *_: None)
    with pytest.raises(ValueError, match="unknown quantization key"):
        run_recipe(TOY, ["train.quantization={load_in_3bit: true}"], dry_run=True, log=lambda *_: None)
    if not torch.cuda.is_available():  # QLoRA needs a GPU: dry-run says so, execution refuses before any stage
        notes = run_recipe(TOY, ["train.quantization=true"], dry_run=True, log=lambda *_: None)["notes"]
        assert any("train.quantization" in n for n in notes)
        with pytest.raises(ValueError, match="train.quantization"):
            run_recipe(TOY, ["train.quantization=true"], out=tmp_path / "q", log=lambda *_: None)
        assert not (tmp_path / "q" / "sample").exists()


def _keys(run: Path) -> dict:
    return {s: json.loads((run / s / "stage_key.json").read_text())["key"] for s in
            ("sample", "judge", "pairs", "train", "eval")}


def test_rerun_skips_and_a_judge_change_reruns_downstream(tmp_path, toy_run):
    run = tmp_path / "run"
    shutil.copytree(toy_run[0], run)  # copy2: modification times kept, so the copy is as finished as the run
    first = toy_run[1]
    assert first["ran"] == STAGES
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


# Every recipe file under recipes/ (found by glob, so a new one cannot be forgotten).
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_every_recipe_runs_every_stage_on_a_tiny_model(recipe, tmp_path, tiny_checkpoint, request):
    if recipe == TOY:
        run, result = request.getfixturevalue("toy_run")  # the same run: reuse the module's
    else:
        run = tmp_path / "run"
        result = run_recipe(recipe, tiny_overrides(recipe), out=run, progress=False, log=lambda *_: None)
    cfg = result["config"]
    kept = cfg["eval"] is not None and cfg["eval"]["rounds"] == "kept"  # the kept round's eval: after the gate
    stages = [s for s in STAGES if s != "eval" or (cfg["eval"] is not None and not kept)]
    if cfg["omission_negatives"]:  # the demo's: judged omission copies between the judge and the pairs
        stages.insert(stages.index("pairs"), "omissions")
    folders = stages if cfg["rounds"] == 1 else [f"round_{r}/{s}" for r in (1, 2) for s in stages]
    assert result["ran"] == folders
    for folder in folders:
        assert json.loads((run / folder / "stage_key.json").read_text())["key"]
    last = run if cfg["rounds"] == 1 else run / "round_2"
    manifest = json.loads((last / "train" / "manifest.json").read_text())
    assert manifest["mode"] == ("lora" if cfg["train"]["peft"] is not None else "full") and manifest["steps"] > 0
    assert manifest["config"]["mdpo"] == cfg["train"]["mdpo"]  # the objective the recipe asked for
    if cfg["train"]["mdpo"]:
        log = json.loads((last / "train" / "train_log.json").read_text())
        assert any("mdpo/image_margins" in row for row in log)
    if cfg["eval"] is not None:
        report = json.loads(Path(result["report"]).read_text())
        assert result["report"] == (result["kept_report"] if kept else str(last / "eval" / "report_after.json"))
        assert report["n"] == 4 and {"chair_s", "chair_i", "recall"} <= set(report["metrics"])
