"""End to end: `halign demo --quick` runs every stage for real on a briefly trained checkpoint."""

import json

import pytest
from safetensors.torch import load_file

from halign.recipes.cli import main


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--quick", "--out", str(out / "run"), "--json", str(out / "report.json"), "--no-progress"])
    assert code == 0
    return out


def test_demo_ran_every_stage(quick_demo):
    run = quick_demo / "run"
    for stage in ("sample", "judge", "pairs", "train"):
        manifest = json.loads((run / stage / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["versions"]["torch"]
    assert (run / "sample" / "candidates.jsonl").stat().st_size > 0
    assert (run / "judge" / "judgments.jsonl").stat().st_size > 0
    assert (run / "pairs" / "dataset" / "dataset_info.json").exists()
    assert (run / "report_before.json").exists() and (run / "report_after.json").exists()
    assert (run / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_report_schema(quick_demo, tiny_checkpoint):
    report = json.loads((quick_demo / "report.json").read_text())
    for side in ("before", "after"):
        assert set(report[side]) >= {"chair_s", "chair_i", "recall", "mean_len", "n"}
        assert report[side]["n"] == 24
        assert 0 <= report[side]["chair_i"] <= 1 and 0 <= report[side]["recall"] <= 1
    assert report["pairs"] > 0
    assert report["judge"]["judge"] == "grounding"
    assert report["checkpoint"] == str(tiny_checkpoint)
    assert report["wall_seconds"] > 0


def test_training_changed_the_parameters(quick_demo):
    # LoRA initialises B to zero: any non-zero B means the optimiser moved the adapter.
    adapter = load_file(str(quick_demo / "run" / "train" / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)
    manifest = json.loads((quick_demo / "run" / "train" / "manifest.json").read_text())
    assert manifest["mode"] == "lora" and manifest["steps"] > 0


def test_demo_rounds_are_on_policy(quick_demo):
    report = json.loads((quick_demo / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    assert report["rounds"][0]["chair_i"] == report["before"]["chair_i"]
    assert report["rounds"][-1]["chair_i"] == report["after"]["chair_i"]
    run = quick_demo / "run"
    # Round 2 sampled with round 1's merged policy, on scenes round 1 never saw.
    manifest = json.loads((run / "round2" / "sample" / "manifest.json").read_text())
    assert manifest["config"]["model"] == str(run / "round1_policy")
    first = {json.loads(line)["id"] for line in (run / "sample" / "prompts.jsonl").read_text().splitlines()}
    second = {json.loads(line)["id"] for line in (run / "round2" / "prompts.jsonl").read_text().splitlines()}
    assert first and second and not first & second
    assert set(report["pope"]["after"]) >= {"accuracy", "f1", "yes_ratio"}
