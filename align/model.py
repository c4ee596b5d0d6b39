"""Loading a policy: any Hugging Face image-text-to-text checkpoint through the Auto classes (the processor
through `load_processor`, which also works without torchvision for processors that want a video processor)."""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def pick_device(device: str | None = None) -> str:
    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_policy(path: str | Path, dtype: str = "float32", device: str | None = None, adapter: str | Path | None = None,
                quantization_config=None):
    """(model, processor) in eval mode. `adapter` is an optional PEFT adapter folder to apply on top;
    `quantization_config` a BitsAndBytesConfig (QLoRA, align/qlora.py): the model then loads on this process's GPU."""
    from transformers import AutoModelForImageTextToText

    from halign.align.processor import load_processor

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    path = str(path)
    adapter_config = Path(path) / "adapter_config.json"
    if adapter is None and adapter_config.exists():
        # A LoRA output folder: load its base model, then the adapter.
        import json

        adapter, path = path, json.loads(adapter_config.read_text())["base_model_name_or_path"]
    processor = load_processor(adapter or path)
    if quantization_config is not None:
        from halign.align.qlora import device_map

        if adapter is not None:
            raise ValueError("a quantized base cannot have an adapter merged into it: merge first (halign export)")
        # Quantized weights cannot be moved after loading, so they are placed while loading.
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype], device_map=device_map(),
                                                            quantization_config=quantization_config)
        model.eval()
        return model, processor
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=DTYPES[dtype])
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.to(pick_device(device))
    model.eval()
    return model, processor
