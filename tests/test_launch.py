"""Launcher configs everywhere; a real 2-process DDP run on CPU (gloo) equals the single-process run; a recipe's
train stage with train.accelerate_config: ddp runs for real in 2 processes through the same launcher."""

import sys

import pytest
import torch
from safetensors.torch import load_file

from halign.align.launch import SHIPPED, launch_command, load_config
from halign.recipes.cli import main


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_are_accelerate_configs(name):
    config = load_config(name)
    assert config["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED"}
    if name.startswith("zero"):
        assert config["deepspeed_config"]["zero_stage"] == int(name[-1])


def test_launch_command_cpu_uses_torchrun_with_gloo():
    argv, env = launch_command("ddp", 2, ["--model", "m"], cuda=False)
    assert argv[1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in argv
    assert argv[-3:] == ["train", "--model", "m"] and env["ACCELERATE_USE_CPU"] == "true"
    argv, env = launch_command("zero3", 8, ["--model", "m"], cuda=True) if _has_deepspeed() else (None, None)
    if argv:
        assert "accelerate.commands.launch" in argv and argv[argv.index("--num_processes") + 1] == "8"


def _has_deepspeed():
    try:
        import deepspeed  # noqa: F401
        return True
    except ImportError:
        return False


def test_zero_on_cpu_runs_deepspeeds_cpu_accelerator_and_unknown_config_is_named():
    if _has_deepspeed():
        argv, env = launch_command("zero3", 1, ["--model", "m"], cuda=False)
        assert argv[1:3] == ["-m", "torch.distributed.run"]  # even one process: DeepSpeed needs the rank variables
        assert env["DS_ACCELERATOR"] == "cpu" and env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3" and env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
        assert "ACCELERATE_USE_CPU" not in env  # it would make accelerate wrap the model in DDP instead
    with pytest.raises(ValueError, match="nope.yaml"):
        launch_command("nope.yaml", 2, [])


def test_two_cpu_processes_equal_one(tmp_path, tiny_checkpoint, pairs_dataset):
    # One step over the same 8 pairs: 1 process x 8 or 2 processes x 4. SGD keeps the update linear in the
    # gradient, so the all-reduced DDP step must equal the single-process step.
    common = ["--model", str(tiny_checkpoint), "--pairs", str(pairs_dataset), "dpo.max_steps=1", "dpo.optim=sgd",
              "dpo.learning_rate=0.5", "dpo.loss_type=[sigmoid]", "dpo.warmup_steps=0", "dpo.logging_steps=1"]
    assert main(["train", "--out", str(tmp_path / "one"), *common, "dpo.per_device_train_batch_size=8"]) == 0
    assert main(["train", "--out", str(tmp_path / "two"), "--accelerate-config", "ddp", "--num-processes", "2",
                 *common, "dpo.per_device_train_batch_size=4"]) == 0
    import json

    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["world_size"] == 1
    one = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    moved = 0
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name
        moved += int("lora_B" in name and one[name].abs().max() > 0)
    assert moved > 0
    # The reference pass is shared out: each rank computed half the pairs, gathered into the same cache.
    (one_cache,), (two_cache,) = [list((tmp_path / run / "trainer" / "ref_logps").glob("*.pt")) for run in ("one", "two")]
    assert one_cache.name == two_cache.name
    for key, values in torch.load(one_cache).items():
        assert torch.allclose(values, torch.load(two_cache)[key], atol=1e-5, rtol=0), key
    computed = [json.loads(cache.with_suffix(".json").read_text())["computed"] for cache in (one_cache, two_cache)]
    assert computed[0]["pairs_per_rank"] == [8] and computed[1]["pairs_per_rank"] == [4, 4]


def test_a_recipe_trains_under_two_cpu_processes(tmp_path, tiny_checkpoint):
    # A recipe's train.accelerate_config / train.num_processes, run for real: the engine writes the round's
    # TrainConfig and starts `halign train --config` in 2 gloo processes through align/launch.py.
    import json
    from pathlib import Path

    import halign.recipes
    from halign.recipes.runner import run_recipe

    recipe = Path(halign.recipes.__file__).parent / "toy_world.yaml"
    # The tiny_checkpoint fixture's settings: the recipe finds that checkpoint in the session's cache.
    tiny = ["toy_checkpoint={sft_scenes: 120, sft_steps: 40, batch_size: 16}",
            "source.n=8", "sample.k=4", "sample.max_new_tokens=32", "eval=null", "train.dpo.num_train_epochs=1",
            "train.dpo.per_device_train_batch_size=4", "train.dpo.warmup_steps=0", "train.dpo.logging_steps=1"]
    run = tmp_path / "run"
    result = run_recipe(recipe, [*tiny, "train.accelerate_config=ddp", "train.num_processes=2"], out=run,
                        progress=False, log=lambda *_: None)
    assert result["ran"] == ["sample", "judge", "pairs", "train"]
    launched = json.loads((run / "train_config.json").read_text())
    assert launched["output_dir"] == str(run / "train") and launched["dpo"]["per_device_train_batch_size"] == 4
    manifest = json.loads((run / "train" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["mode"] == "lora" and manifest["steps"] > 0
    adapter = load_file(str(run / "train" / "adapter_model.safetensors"))
    assert any(t.abs().max() > 0 for name, t in adapter.items() if "lora_B" in name)  # training moved the adapter
    # Both ranks took part: the reference pass was shared out between them.
    (cache,) = (run / "train" / "trainer" / "ref_logps").glob("*.json")
    per_rank = json.loads(cache.read_text())["computed"]["pairs_per_rank"]
    pairs = json.loads((run / "pairs" / "summary.json").read_text())["pairs"]
    assert len(per_rank) == 2 and min(per_rank) > 0 and sum(per_rank) >= pairs
