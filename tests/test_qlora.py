"""QLoRA settings (align/qlora.py): checked before a model loads; the real run needs bitsandbytes + a GPU."""

import importlib.util

import pytest
import torch

from halign.align.qlora import QLORA_DEFAULTS, make_quantization_config, quantization_args

GPU_QLORA = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_defaults_are_the_qlora_paper_setting():
    assert quantization_args(True, lora=True) == QLORA_DEFAULTS
    assert quantization_args({}, lora=True)["bnb_4bit_quant_type"] == "nf4"
    assert quantization_args({"bnb_4bit_quant_type": "fp4"}, lora=True)["bnb_4bit_quant_type"] == "fp4"
    assert quantization_args({"load_in_8bit": True}, lora=True) == {"load_in_8bit": True}
    assert quantization_args(None, lora=False) is None and quantization_args(False, lora=True) is None


@pytest.mark.parametrize("setting,lora,message", [
    (True, False, "needs peft"),
    ({"load_in_3bit": True}, True, "unknown quantization key.*load_in_3bit"),
    ({"load_in_4bit": False}, True, "load_in_4bit: true or load_in_8bit"),
    ("nf4", True, "mapping of BitsAndBytesConfig"),
])
def test_bad_settings_name_the_problem(setting, lora, message):
    with pytest.raises(ValueError, match=message):
        quantization_args(setting, lora=lora)


@pytest.mark.skipif(GPU_QLORA, reason="this machine can run QLoRA")
def test_missing_hardware_is_a_clear_error_before_loading(tiny_checkpoint, pairs_dataset, tmp_path):
    from halign.align.dpo import TrainConfig, train

    with pytest.raises(ValueError, match="bitsandbytes|CUDA GPU"):
        make_quantization_config(True, lora=True)
    with pytest.raises(ValueError, match="bitsandbytes|CUDA GPU"):
        train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "q"),
                          quantization=True), progress=False)
    assert not (tmp_path / "q" / "manifest.json").exists()


def test_quantized_load_goes_to_this_process_gpu(monkeypatch, tiny_checkpoint):
    """load_policy hands the BitsAndBytesConfig to from_pretrained with a device map and never calls .to()."""
    import transformers

    from halign.align.model import load_policy

    seen = {}
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def fake_from_pretrained(path, **kwargs):
        seen.update(kwargs)
        model = real(path, dtype=kwargs["dtype"])
        model.to = lambda *a, **k: pytest.fail("a quantized model must not be moved")
        return model

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fake_from_pretrained)
    monkeypatch.setenv("LOCAL_RANK", "1")
    marker = object()
    load_policy(tiny_checkpoint, quantization_config=marker)
    assert seen["quantization_config"] is marker and seen["device_map"] == {"": 1}


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_QLORA, reason="needs bitsandbytes and a CUDA GPU")
def test_qlora_dpo_step_on_gpu(tiny_checkpoint, pairs_dataset, tmp_path):
    import json

    from halign.align.dpo import TrainConfig, train

    out = train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "q"),
                            dpo={"num_train_epochs": 1, "per_device_train_batch_size": 4}, quantization=True),
                progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] >= 1 and (out / "adapter_config.json").exists()
