"""vLLM backend without vLLM: the clear error naming the extra, and the prompts / multimodal inputs it builds
(checked against a fake `vllm` module that records what it was given)."""

from __future__ import annotations

import sys
import types

import pytest
from PIL import Image

from halign.data_gen.vllm_backend import build_inputs, generate_texts_vllm


@pytest.fixture
def records(tmp_path):
    paths = []
    for i, color in enumerate(["red", "blue"]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (48, 48), color).save(paths[-1])
    return [{"id": "one", "images": paths[:1], "question": "Describe the image."},
            {"id": "two", "images": paths, "question": "Is there a red circle in the image?"}]


def fake_vllm(log: dict):
    class SamplingParams:
        def __init__(self, **kw):
            log["params"] = kw
            self.n = kw["n"]

    class LLM:
        def __init__(self, **kw):
            log["llm"] = kw

        def generate(self, inputs, params):
            log["inputs"] = inputs
            out = []
            for i, _ in enumerate(inputs):
                completions = [types.SimpleNamespace(text=f" answer {i}.{j} ") for j in range(params.n)]
                out.append(types.SimpleNamespace(outputs=completions))
            return out

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_missing_vllm_names_the_extra(monkeypatch, records):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError, match=r"halign\[vllm\]"):
        generate_texts_vllm("some/model", records, k=2, temperature=1.0)


def test_inputs_and_output_shape(monkeypatch, records, tiny_checkpoint):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    log: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(log))
    texts = generate_texts_vllm(tiny_checkpoint, records, k=3, temperature=0.7, top_p=0.9, max_new_tokens=20,
                                seed=5)
    assert texts == [[f"answer {i}.{j}" for j in range(3)] for i in range(2)]  # like generate_texts: stripped
    assert log["params"] == {"n": 3, "temperature": 0.7, "top_p": 0.9, "max_tokens": 20, "seed": 5}
    assert log["llm"]["model"] == str(tiny_checkpoint) and log["llm"]["seed"] == 5
    assert log["llm"]["limit_mm_per_prompt"] == {"image": 2}  # the two-image prompt needs the limit raised

    one, two = log["inputs"]
    # The same prompt text the HF backend renders (the checkpoint's chat template with a generation prompt).
    assert one["prompt"] == "USER:<image> Describe the image.ASSISTANT:"
    assert two["prompt"] == "USER:<image><image> Is there a red circle in the image?ASSISTANT:"
    assert one["prompt"] == processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        add_generation_prompt=True, tokenize=False)
    assert isinstance(one["multi_modal_data"]["image"], Image.Image)
    assert [im.getpixel((0, 0)) for im in two["multi_modal_data"]["image"]] == [(255, 0, 0), (0, 0, 255)]


def test_greedy_and_text_only(monkeypatch, records, tiny_checkpoint):
    from transformers import AutoProcessor

    log: dict = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(log))
    with pytest.raises(ValueError, match="greedy"):
        generate_texts_vllm(tiny_checkpoint, records, k=2, temperature=0)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    [item] = build_inputs(processor, [{"id": "t", "question": "Describe the image."}])
    assert "multi_modal_data" not in item
    texts = generate_texts_vllm(tiny_checkpoint, records[:1], k=1, temperature=0, processor=processor)
    assert texts == [["answer 0.0"]] and log["params"]["top_p"] == 1.0
    assert "limit_mm_per_prompt" not in log["llm"]
