"""End to end: `halign demo --quick` runs every stage for real on a briefly trained checkpoint; a reduced demo on
the shipped checkpoint shows the direction (hallucination falls, recall and POPE hold)."""

import json
from pathlib import Path

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
    for r in (1, 2):
        for stage in ("sample", "judge", "pairs", "train"):
            manifest = json.loads((run / f"round_{r}" / stage / "manifest.json").read_text())
            assert manifest["stage"] == stage and manifest["versions"]["torch"]
        assert (run / f"round_{r}" / "sample" / "candidates.jsonl").stat().st_size > 0
        assert (run / f"round_{r}" / "judge" / "judgments.jsonl").stat().st_size > 0
        assert (run / f"round_{r}" / "pairs" / "dataset" / "dataset_info.json").exists()
        assert (run / f"round_{r}" / "validation" / "pope.json").exists()
    test = run / "round_1" / "eval"  # the test split before alignment
    assert (test / "report_before.json").exists() and (test / "pope_before.json").exists()
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
    assert report["kept_round"] == report["gate"]["chosen_round"] in (0, 1, 2) and report["gate"]["rule"]


def test_training_changed_the_parameters(quick_demo):
    # LoRA initialises B to zero: any non-zero B means the optimiser moved the adapter.
    adapter = load_file(str(quick_demo / "run" / "round_1" / "train" / "adapter_model.safetensors"))
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and any(t.abs().max() > 0 for t in lora_b)
    manifest = json.loads((quick_demo / "run" / "round_1" / "train" / "manifest.json").read_text())
    assert manifest["mode"] == "lora" and manifest["steps"] > 0


def test_demo_rounds_are_on_policy(quick_demo):
    report = json.loads((quick_demo / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]  # validation scores, round 0 = before
    run = quick_demo / "run"
    # Round 2 sampled with round 1's merged policy, on scenes round 1 never saw.
    manifest = json.loads((run / "round_2" / "sample" / "manifest.json").read_text())
    assert manifest["config"]["model"] == str((run / "round_1" / "train" / "merged").resolve())
    first = {json.loads(line)["id"] for line in (run / "round_1" / "source" / "prompts.jsonl").read_text().splitlines()}
    second = {json.loads(line)["id"] for line in (run / "round_2" / "source" / "prompts.jsonl").read_text().splitlines()}
    assert first and second and not first & second
    assert set(report["pope"]["after"]) >= {"accuracy", "f1", "yes_ratio"}
    assert all("pope_accuracy" in r for r in report["rounds"])


def test_quick_demo_never_keeps_a_round_that_hallucinates_more_or_loses_recall(quick_demo):
    """Direction on the quick config (a briefly trained checkpoint, 24 test scenes, two small rounds). Measured
    (seed 0, CPU): no round is worth keeping there. Round 1 raised validation CHAIR_i (0.333 -> 0.354), round 2
    answered in ~2 words (CHAIR_i 0, but recall 0.254 -> 0), so the gate keeps the model before alignment and
    the test scores before and after are equal. The strict "hallucination falls" check needs a checkpoint that
    can describe scenes: the shipped one, in the next test. What holds whichever round the gate keeps:
    hallucination does not rise and recall stays within the gate's tolerance, on validation and on test."""
    report = json.loads((quick_demo / "report.json").read_text())
    tolerance = report["gate"]["settings"]["recall_tolerance"]
    assert tolerance == 0.03
    rounds = {r["round"]: r for r in report["rounds"]}
    start, kept = rounds[0], rounds[report["kept_round"]]
    assert kept["chair_i"] <= start["chair_i"] and kept["recall"] >= start["recall"] - tolerance
    before, after = report["before"], report["after"]
    assert after["chair_i"] <= before["chair_i"] and after["chair_s"] <= before["chair_s"]
    assert after["recall"] >= before["recall"] - tolerance
    # Saying (almost) nothing hallucinates nothing: a round that bought its CHAIR that way is passed over.
    silenced = [r["round"] for r in report["rounds"][1:] if r["recall"] < start["recall"] - tolerance]
    assert report["kept_round"] not in silenced
    assert all(str(r) in report["gate"]["passed_over"] for r in silenced)


def test_alignment_lowers_hallucination_and_keeps_recall_and_pope(tmp_path):
    """On the shipped checkpoint, one reduced round (~15 s): the direction the demo claims. A flipped DPO sign,
    a judge that rewards inventions or pairs built the wrong way round all fail here."""
    from halign.recipes.demo import DemoConfig, run_demo

    # Two epochs over the one round's pairs: the demo's one epoch a round moves this small a round too little
    # to tell a right sign from noise.
    dpo = {**DemoConfig().dpo, "num_train_epochs": 2}
    cfg = DemoConfig(out=str(tmp_path / "run"), eval_scenes=100, val_scenes=60, dpo_scenes=200, k=4, rounds=1,
                     dpo=dpo)
    report = run_demo(cfg, progress=False, log=lambda *_: None)
    before, after = report["before"], report["after"]
    assert report["kept_round"] == 1  # the gate kept the trained round
    from test_html_report_runs import page_data  # tests/ is on sys.path

    assert page_data(Path(report["html"]))["labels"] == ["before", "round 1 (kept)"]  # the page: test records
    assert before["chair_i"] >= 0.15  # the shipped checkpoint hallucinates ...
    # ... less now (one small round: 0.68x on CHAIR_i here; the full demo's five rounds reach 0.1-0.35x)
    assert after["chair_i"] <= 0.8 * before["chair_i"] and after["chair_s"] <= 0.8 * before["chair_s"]
    assert after["recall"] >= before["recall"] - 0.03
    assert report["pope"]["after"]["accuracy"] >= report["pope"]["before"]["accuracy"] - 0.02
