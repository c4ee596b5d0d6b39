"""Iterative RLAIF and LoRA export on the briefly trained toy checkpoint (tiny sizes: real code, fast)."""

import json

import torch

from halign.recipes.rlaif import RlaifConfig, run_rlaif


def tiny_cfg(out, model):
    return RlaifConfig(
        model=str(model), out=str(out), rounds=2, prompts_per_round=12, eval_n=10, val_n=8,
        sample={"k": 3, "temperature": 1.0, "max_new_tokens": 24},
        pairs={"strategy": "gap", "min_gap": 0.5, "sample_num": 2, "keep_coverage": False},
        dpo={"learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 4},
    )


def test_two_rounds_then_resume_does_nothing(tmp_path, tiny_checkpoint):
    logs = []
    summary = run_rlaif(tiny_cfg(tmp_path / "r", tiny_checkpoint), progress=False, log=logs.append)
    rounds = summary["rounds"]
    assert [h["round"] for h in rounds] == [0, 1, 2]
    for h in rounds:  # validation scores: captions and the scenes' yes/no questions
        assert {"chair_s", "chair_i", "recall", "n", "pope_accuracy", "pope_yes_ratio"} <= set(h) and h["n"] == 8
    # Round 2 trained from round 1's merged policy, which is a standalone checkpoint.
    policy1 = rounds[1]["policy"]
    assert policy1.endswith("round_1/train/merged")
    train2 = json.loads((tmp_path / "r" / "round_2" / "train" / "manifest.json").read_text())
    assert train2["config"]["model"] == policy1
    assert (tmp_path / "r" / "rounds.png").exists()
    # The gate kept one round, by its rule; the test split scored only the start and that round.
    kept = summary["gate"]["chosen_round"]
    assert summary["final_policy"] == rounds[kept]["policy"] and summary["last_policy"] == rounds[2]["policy"]
    assert summary["test"]["before"]["n"] == summary["test"]["after"]["n"] == 10
    assert (tmp_path / "r" / "round_1" / "eval" / "report_before.json").exists()
    assert sorted(p.parent.parent.name for p in (tmp_path / "r").glob("round_*/eval/report_after.json")) == (
        [f"round_{kept}"] if kept else [])

    # Round 1's prompts differ from round 2's (fresh prompts each round).
    p1 = (tmp_path / "r" / "round_1" / "source" / "prompts.jsonl").read_text()
    p2 = (tmp_path / "r" / "round_2" / "source" / "prompts.jsonl").read_text()
    assert p1 != p2

    logs.clear()
    again = run_rlaif(tiny_cfg(tmp_path / "r", tiny_checkpoint), progress=False, log=logs.append)
    assert sum("already finished" in m for m in logs) == 2
    assert again["final_policy"] == summary["final_policy"] and again["rounds"] == rounds
    assert again["test"] == summary["test"]


def test_merged_export_loads_with_auto_classes_and_differs_from_base(tmp_path, tiny_checkpoint):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    run_rlaif(RlaifConfig(**{**tiny_cfg(tmp_path / "r", tiny_checkpoint).__dict__, "rounds": 1}), progress=False,
              log=lambda *_: None)
    merged = tmp_path / "r" / "round_1" / "train" / "merged"
    model = AutoModelForImageTextToText.from_pretrained(merged)
    AutoProcessor.from_pretrained(merged)
    base = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    assert not any("lora" in name for name, _ in model.named_parameters())
    base_params = dict(base.named_parameters())
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base_params[n])]
    assert changed and all("language_model" in n for n in changed)  # LoRA touched only the decoder
