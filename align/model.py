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


def import_model_classes(path: str | Path) -> None:
    """Import the modeling modules of a checkpoint's model and of its sub-models (text, vision) now.

    Why: under DeepSpeed ZeRO-3, from_pretrained builds the model inside `zero.Init`, which wraps the __init__
    of every nn.Module subclass while it is open and puts back the one it found when it closes. LLaVA-style
    models import their text model lazily, inside that context; a class first defined there and decorated at
    import (transformers 5.25 with `kernels` decorates attention classes with an __init__ that sets
    `_kernel_funcs`) gets its undecorated __init__ back on exit, and every model built afterwards (trl's
    reference copy in full-parameter training) fails in forward: "object has no attribute '_kernel_funcs'".
    Imported beforehand, the class is complete before any context wraps it."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, MODEL_MAPPING

    config = AutoConfig.from_pretrained(str(path))
    configs = [config] + [getattr(config, name) for name in getattr(config, "sub_configs", {})
                          if getattr(config, name, None) is not None]
    for sub in configs:
        for mapping in (MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, MODEL_MAPPING):
            if type(sub) in mapping:
                mapping[type(sub)]  # a lazy mapping: looking the class up imports its module


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
    import_model_classes(path)
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
