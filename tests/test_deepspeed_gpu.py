"""DeepSpeed ZeRO-2 / ZeRO-3 training, LoRA and full, through the shipped configs (GPU machines only).

Marked `gpu` and skipped without CUDA GPUs and the `deepspeed` package (pip install 'halign[deepspeed]').
Config generation and the launch command are tested everywhere in tests/test_launch.py.
"""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from halign.recipes.cli import main

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("deepspeed") is None,
                       reason="needs CUDA GPUs and deepspeed"),
]


def _weights(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_zero_trains_and_saves_a_loadable_model(stage, full, tmp_path, tiny_checkpoint, pairs_dataset):
    out = tmp_path / "out"
    argv = ["train", "--model", str(tiny_checkpoint), "--pairs", str(pairs_dataset), "--out", str(out),
            "--accelerate-config", stage, "--num-processes", str(torch.cuda.device_count()),
            "dpo.max_steps=2", "dpo.per_device_train_batch_size=4", "dpo.logging_steps=1", "dpo.bf16=true"]
    assert main(argv + (["--full"] if full else [])) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 2 and manifest["mode"] == ("full" if full else "lora")
    assert manifest["world_size"] == torch.cuda.device_count()
    if full:  # ZeRO-3 shards are gathered on save: the checkpoint is whole and differs from the start
        from transformers import AutoModelForImageTextToText

        before, after = _weights(tiny_checkpoint), _weights(out)
        assert before.keys() == after.keys()
        assert any(not torch.equal(before[k].float(), after[k].float()) for k in before)
        AutoModelForImageTextToText.from_pretrained(str(out))
    else:
        adapter = load_file(str(out / "adapter_model.safetensors"))
        assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())
