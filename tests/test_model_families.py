"""One LoRA and one full-parameter DPO step through `halign.align.dpo.train` for each VLM family.

Tiny random checkpoints (tests/tiny_models.py) are saved to disk and loaded back through `load_policy`, as
`halign train` does with a hub checkpoint. Each test asserts that training changed the weights it owns and,
in full mode, that the vision tower and projector moved: their gradient is non-zero only if image
features reach the DPO loss.
"""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from halign.align.dpo import TrainConfig, train
from halign.data_gen.pairs import to_dataset
import tiny_models  # tests/ is on sys.path (pytest rootdir-less "prepend" import mode)

# The language model of Idefics3/SmolVLM is `model.text_model`, which dpo.DEFAULT_LORA's regex does not name.
TEXT_MODEL_LORA = {"target_modules": r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}
# Qwen2-VL, Qwen2.5-VL and SmolVLM processors need a video processor, hence torchvision; without it they load
# image-only (halign.align.processor), which is all DPO on image pairs uses.
FAMILIES = [pytest.param(name, id=name) for name in tiny_models.FAMILIES]
# Qwen2-VL/Qwen2.5-VL checkpoints are saved with their original key names: `model.layers.*` for the
# language model, `visual.*` for the vision tower and `visual.merger.*` for the projector.
LANGUAGE_PARTS = ("language_model", "text_model", "model.layers.")
VISION_PARTS = ("vision_tower", "visual", "vision_model")
PROJECTOR_PARTS = ("multi_modal_projector", "connector", "merger")

QUESTIONS = ["describe the image .", "what is in the image ?", "is there a red circle ?", "describe the image ."]
ANSWERS = [("a red circle .", "a blue square and a star ."), ("a green triangle .", "a cat and a dog ."),
           ("yes .", "no ."), ("a blue star on the left .", "a red circle on the right .")]
COLORS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (240, 240, 20)]


def write_pairs(folder, n: int = 4, size: int = 32):
    """A pairs dataset exactly as data_gen/pairs.to_dataset writes it, over PNG files on disk."""
    rows = []
    for i in range(n):
        image = Image.new("RGB", (size, size), (255, 255, 255))
        image.paste(COLORS[i], (4 * i, 4, 4 * i + size // 2, 4 + size // 2))
        path = folder / f"img{i}.png"
        image.save(path)
        rows.append({"prompt_id": f"p{i}", "image_paths": [str(path)],
                     "prompt": [{"role": "user", "content": QUESTIONS[i % 4]}],
                     "chosen": [{"role": "assistant", "content": ANSWERS[i % 4][0]}],
                     "rejected": [{"role": "assistant", "content": ANSWERS[i % 4][1]}],
                     "chosen_score": 1.0, "rejected_score": 0.0, "judge": "test"})
    out = folder / "pairs"
    to_dataset(rows).save_to_disk(str(out))
    return out


@pytest.fixture(scope="module")
def family_setup(tmp_path_factory):
    """Checkpoint + pairs per family, built once per module (the LoRA and full tests share them)."""
    made = {}

    def get(name):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            made[name] = (tiny_models.save_family(name, root / "ckpt"), write_pairs(root))
        return made[name]
    return get


def run_step(ckpt, pairs, out, peft, steps=1, mdpo=None):
    dpo = {"max_steps": steps, "per_device_train_batch_size": 2, "learning_rate": 1e-2, "warmup_steps": 0,
           "logging_steps": 1, "num_train_epochs": 1}
    return train(TrainConfig(model=str(ckpt), pairs=str(pairs), output_dir=str(out), dpo=dpo, peft=peft, mdpo=mdpo),
                 progress=False)


def _state(folder):
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_step(family, family_setup, tmp_path):
    ckpt, pairs = family_setup(family)
    peft = TEXT_MODEL_LORA if family in ("idefics3", "smolvlm") else {}
    out = run_step(ckpt, pairs, tmp_path / "out", peft)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    assert lora_b, f"no LoRA weights in the adapter: {sorted(adapter)[:5]}"
    # lora_B starts at zero: any non-zero entry means the step trained the adapter.
    assert any(v.abs().sum() > 0 for v in lora_b.values())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "lora" and manifest["steps"] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_mdpo_steps(family, family_setup, tmp_path):
    """mDPO's corrupted-image rows run on every family (the loss itself is checked by hand in test_mdpo.py)."""
    ckpt, pairs = family_setup(family)
    peft = TEXT_MODEL_LORA if family in ("idefics3", "smolvlm") else {}
    out = run_step(ckpt, pairs, tmp_path / "out", peft, steps=2, mdpo=True)
    log = [row for row in json.loads((out / "train_log.json").read_text()) if "mdpo/image_margins" in row]
    assert len(log) == 2 and all(row["loss"] == row["loss"] for row in log)  # finite, logged every step
    assert log[1]["mdpo/image_margins"] != 0.0  # after one update the policy tells real from corrupted images


@pytest.mark.parametrize("family", FAMILIES)
def test_full_step_reaches_image_features(family, family_setup, tmp_path):
    ckpt, pairs = family_setup(family)
    out = run_step(ckpt, pairs, tmp_path / "out", None)
    before, after = _state(ckpt), _state(out)
    changed = {k for k in before if k in after and not torch.equal(before[k], after[k])}
    assert any(p in k for k in changed for p in LANGUAGE_PARTS), "language model unchanged"
    projector = [k for k in before if any(p in k for p in PROJECTOR_PARTS)]
    vision = [k for k in before if any(p in k for p in VISION_PARTS) and k not in projector]
    assert vision and projector, f"vision/projector weights not found in {sorted(before)[:8]}"
    # A weight moves under Adam only where its gradient is non-zero: the image features reach the loss.
    assert set(vision) & changed, "vision tower got no gradient from the DPO loss"
    assert set(projector) & changed, "projector got no gradient from the DPO loss"


def test_paligemma_collator_marks_completions_as_suffix():
    """PaliGemma: completions are tokenized without images and marked causal (token type 1), prompts type 0."""
    from types import SimpleNamespace

    from halign.align.collator import make_data_collator

    args = SimpleNamespace(max_length=None, pad_to_multiple_of=None)
    assert make_data_collator(tiny_models.build_family("llava")[1], args) is None  # trl's default elsewhere
    processor = tiny_models.build_family("paligemma")[1]
    collator = make_data_collator(processor, args)
    image = Image.new("RGB", (32, 32), COLORS[0])
    batch = collator([{"images": [image], "prompt": [{"role": "user", "content": q}],
                       "chosen": [{"role": "assistant", "content": c}], "rejected": [{"role": "assistant", "content": r}]}
                      for q, (c, r) in zip(QUESTIONS[:2], ANSWERS[:2])])
    assert "labels" not in batch  # the trainer builds labels from completion_mask
    real = batch["attention_mask"].bool()
    completion = batch["completion_mask"].bool()
    assert torch.equal(batch["token_type_ids"][completion], torch.ones(int(completion.sum()), dtype=torch.long))
    assert not batch["token_type_ids"][real & ~completion].any()
    # The completion "a red circle ." ends with <eos>, as PaliGemma's own `suffix=` encoding does.
    eos = processor.tokenizer.eos_token_id
    assert batch["input_ids"][0][completion[0]].tolist()[-1] == eos


def test_model_classes_are_imported_before_loading(tiny_checkpoint):
    """load_policy imports the checkpoint's model classes and its sub-models' (LLaVA: CLIP and Llama) before
    from_pretrained, so under DeepSpeed ZeRO-3 no class is first defined inside zero.Init (align/model.py:
    import_model_classes; tests/test_deepspeed_cpu.py's zero3-full case is the end-to-end check). A fresh
    interpreter, since this session has imported them already."""
    import subprocess
    import sys

    code = ("import sys; from halign.align.model import import_model_classes; "
            f"import_model_classes({str(tiny_checkpoint)!r}); "
            "print(' '.join(m for m in ('llava', 'clip', 'llama') "
            "if f'transformers.models.{m}.modeling_{m}' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["llava", "clip", "llama"]
