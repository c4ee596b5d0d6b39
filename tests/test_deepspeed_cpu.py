"""DeepSpeed ZeRO-2 / ZeRO-3 on CPU (DeepSpeed's CPU accelerator, align/launch.py): the fast DPO path under the
same engine as trl's, step for step.

`halign train --accelerate-config zeroN` runs here through torch.distributed.run; every run logs its loss at
each of 3 steps and the manifest records the ZeRO stage it ran under. The fast path (reference log-probs computed
before training, shared out across ranks; ZeRO-3 weights gathered for that one no-grad pass) must give trl's
losses, and with 2 processes each rank computes half of the reference pass. GPU runs of the same configs:
tests/test_deepspeed_gpu.py and tests/gpu/device_check.py.
"""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from halign.recipes.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (pip install 'halign[dev]')")


def _train(out, checkpoint, pairs, stage, processes, fast, full):
    argv = ["train", "--model", str(checkpoint), "--pairs", str(pairs), "--out", str(out),
            "--accelerate-config", stage, "--num-processes", str(processes), "dpo.max_steps=3",
            f"dpo.per_device_train_batch_size={8 // processes}", "dpo.logging_steps=1", "dpo.learning_rate=1e-3",
            "dpo.warmup_steps=0", "dpo.loss_type=[sigmoid]",
            # Adam's default eps (1e-8) turns rounding-level gradients (~1e-9, e.g. rows of the tied embedding that
            # are near no answer) into weight moves of ~lr either way; 1e-6 keeps the weight check about real ones.
            "dpo.adam_epsilon=1e-6"]
    assert main(argv + (["--full"] if full else []) + ([] if fast else ["--no-fast"])) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    losses = [h["loss"] for h in json.loads((out / "train_log.json").read_text()) if "loss" in h]
    return manifest, losses


@pytest.mark.parametrize("stage,processes,full", [("zero3", 2, False), ("zero3", 1, True), ("zero2", 1, True)],
                         ids=["zero3-2proc-lora", "zero3-full", "zero2-full"])
def test_fast_path_under_zero_equals_trl(stage, processes, full, tmp_path, tiny_checkpoint, pairs_dataset):
    runs = {}
    for fast in (False, True):
        runs[fast] = _train(tmp_path / ("fast" if fast else "trl"), tiny_checkpoint, pairs_dataset, stage, processes,
                            fast, full)
    (trl_manifest, trl_losses), (fast_manifest, fast_losses) = runs[False], runs[True]
    assert fast_manifest["trainer"] == "FastVisionDPOTrainer" and trl_manifest["trainer"] == "DPOTrainer"
    for manifest in (trl_manifest, fast_manifest):
        assert manifest["zero_stage"] == int(stage[-1]) and manifest["world_size"] == processes
        assert manifest["steps"] == 3 and manifest["mode"] == ("full" if full else "lora")
    assert len(fast_losses) == 3 and fast_losses[-1] < fast_losses[0]  # it trained
    assert fast_losses == pytest.approx(trl_losses, abs=1e-5)
    (cache,) = (tmp_path / "fast" / "trainer" / "ref_logps").glob("*.json")
    assert json.loads(cache.read_text())["computed"]["pairs_per_rank"] == [8 // processes] * processes
    if full:  # weights gathered from the shards on save: whole, and the same on both paths
        files = [sorted((tmp_path / side).glob("*.safetensors")) for side in ("trl", "fast")]
        weights = [{k: v for f in side for k, v in load_file(str(f)).items()} for side in files]
        assert weights[0].keys() == weights[1].keys() and weights[0]
        worst = max((weights[0][k].float() - weights[1][k].float()).abs().max().item() for k in weights[0])
        # Three AdamW steps of lr 1e-3 move weights by up to ~3e-3; last-bit gradient differences (one packed row
        # vs two rows, answer-only log-softmax vs trl's tiles) leave ~2e-6 with adam_epsilon 1e-6.
        assert worst < 1e-5, worst
