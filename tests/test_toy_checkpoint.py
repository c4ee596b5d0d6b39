import json

import torch

from halign.data_gen import toy_world
from halign.data_gen.toy_checkpoint import build_processor, get_toy_checkpoint, verify_checkpoint


def test_tokenizer_round_trips_toy_text():
    processor = build_processor(toy_world.ToyWorldConfig())
    tok = processor.tokenizer
    text = "a red circle, a blue square and a green star."
    ids = tok(" " + text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids).strip() == text


def test_chat_template_prompt_is_prefix_of_conversation():
    processor = build_processor(toy_world.ToyWorldConfig())
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(user + [{"role": "assistant", "content": "a red circle."}], tokenize=False)
    assert full.startswith(prompt) and full.endswith("</s>")


def test_checkpoint_loads_through_auto_classes_and_generates(tiny_checkpoint):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_checkpoint)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    cfg = toy_world.ToyWorldConfig()
    scene = toy_world.make_scene(cfg, "eval", 0)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=[toy_world.draw_scene(cfg, scene)], text=[text], return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == cfg.grid * cfg.grid
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    record = json.loads((tiny_checkpoint / "halign_build.json").read_text())
    assert record["final_loss"] < 3.0  # it learned something in 40 steps


def test_cache_is_reused_and_corruption_rebuilds(tiny_checkpoint, tiny_ckpt_config, halign_cache):
    assert verify_checkpoint(tiny_checkpoint) is None
    stamp = (tiny_checkpoint / "model.safetensors").stat().st_mtime_ns
    assert get_toy_checkpoint(tiny_ckpt_config, progress=False, log=lambda *_: None) == tiny_checkpoint
    assert (tiny_checkpoint / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    weights = tiny_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100] + b"\0" * 100)
    assert "does not match" in verify_checkpoint(tiny_checkpoint)
    messages = []
    again = get_toy_checkpoint(tiny_ckpt_config, progress=False, log=messages.append)
    assert again == tiny_checkpoint and verify_checkpoint(again) is None
    assert any("cannot be trusted" in m for m in messages)


def test_build_is_deterministic(tmp_path, tiny_ckpt_config):
    from dataclasses import replace

    cfg = replace(tiny_ckpt_config, sft_steps=3, sft_scenes=20)
    a = get_toy_checkpoint(cfg, cache_dir=tmp_path / "a", progress=False, log=lambda *_: None)
    b = get_toy_checkpoint(cfg, cache_dir=tmp_path / "b", progress=False, log=lambda *_: None)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_the_standard_checkpoint_ships_with_the_package_and_is_used_as_is():
    from halign.data_gen.toy_checkpoint import SHIP_COMMAND, ToyCheckpointConfig, shipped_checkpoint

    cfg = ToyCheckpointConfig()
    shipped = shipped_checkpoint(cfg)
    # A change to the build recipe changes the key: then the shipped copy must be rebuilt (`halign toy-checkpoint
    # --ship`), or every user would build their own, different, starting point.
    assert shipped.is_dir(), f"no shipped checkpoint for the current recipe; run `{SHIP_COMMAND}`"
    assert verify_checkpoint(shipped) is None
    record = json.loads((shipped / "halign_build.json").read_text())
    assert record["key"] == cfg.key() and record["command"] == SHIP_COMMAND and record["built_on"]["torch"]
    assert sum(p.stat().st_size for p in shipped.iterdir()) < 4_000_000
    assert get_toy_checkpoint(cfg, progress=False, log=lambda *_: None) == shipped


def test_a_tampered_shipped_checkpoint_is_not_trusted(tmp_path, monkeypatch, tiny_checkpoint, tiny_ckpt_config,
                                                      halign_cache):
    import shutil

    from halign.data_gen import toy_checkpoint

    shipped_root = tmp_path / "shipped"
    monkeypatch.setattr(toy_checkpoint, "SHIPPED_DIR", shipped_root)
    shipped = toy_checkpoint.shipped_checkpoint(tiny_ckpt_config)
    shutil.copytree(tiny_checkpoint, shipped)
    assert get_toy_checkpoint(tiny_ckpt_config, progress=False, log=lambda *_: None) == shipped
    weights = shipped / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10] + b"\1" * 10)
    messages = []
    path = get_toy_checkpoint(tiny_ckpt_config, progress=False, log=messages.append)
    assert path == tiny_checkpoint and verify_checkpoint(path) is None  # the cache's copy, not the tampered one
    assert any("shipped toy checkpoint" in m and "cannot be trusted" in m for m in messages)
