"""QLoRA: LoRA adapters trained on a 4-bit (or 8-bit) quantized base model, through bitsandbytes.

`TrainConfig.quantization` holds `transformers.BitsAndBytesConfig` field names; `{}` or `true` means the
QLoRA paper's setting (4-bit NF4, double quantization, bf16 compute). The model is loaded quantized on this
process's GPU, and trl's DPOTrainer does the rest (it casts the adapters to bf16 for quantized bases).
Everything that can be wrong is checked before a model loads: full fine-tuning (4-bit weights cannot be
trained), bitsandbytes missing, no CUDA GPU, unknown keys.
"""

from __future__ import annotations

import importlib.util
import inspect
import os

QLORA_DEFAULTS = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                  "bnb_4bit_compute_dtype": "bfloat16"}


def quantization_args(setting, lora: bool) -> dict | None:
    """The BitsAndBytesConfig keyword arguments for `setting` (None/false = no quantization)."""
    if setting is None or setting is False:
        return None
    if setting is True:
        setting = {}
    if not isinstance(setting, dict):
        raise ValueError(f"quantization must be true, false or a mapping of BitsAndBytesConfig fields, got {setting!r}")
    if not lora:
        raise ValueError("quantization (QLoRA) trains LoRA adapters on a quantized base: it needs peft "
                         "(full fine-tuning, peft: null, cannot update 4-bit weights)")
    from transformers import BitsAndBytesConfig

    known = set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(setting) - known)
    if unknown:
        raise ValueError(f"unknown quantization key(s): {', '.join(unknown)} (they must be BitsAndBytesConfig fields)")
    args = dict(setting) if setting.get("load_in_8bit") else {**QLORA_DEFAULTS, **setting}
    if not (args.get("load_in_4bit") or args.get("load_in_8bit")):
        raise ValueError("quantization needs load_in_4bit: true or load_in_8bit: true")
    return args


def check_hardware() -> None:
    """bitsandbytes quantized training needs the package and a CUDA GPU: say which one is missing."""
    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("quantization (QLoRA) needs bitsandbytes: pip install 'halign[qlora]'")
    if not torch.cuda.is_available():
        raise ValueError("quantization (QLoRA) needs a CUDA GPU (bitsandbytes 4/8-bit kernels); none is visible")


def make_quantization_config(setting, lora: bool):
    """A BitsAndBytesConfig (checked against the hardware), or None when quantization is off."""
    args = quantization_args(setting, lora)
    if args is None:
        return None
    check_hardware()
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(**args)


def device_map() -> dict:
    """Quantized weights cannot be moved after loading: place the whole model on this process's GPU."""
    return {"": int(os.environ.get("LOCAL_RANK", "0"))}
