"""The tiny video checkpoint (data_gen/toy_video_checkpoint.py): tokenizer and template, the QUICK build
saved, reloaded through the Auto classes and sampled from through `halign sample`, the cache, and the
standard configuration's key."""

import json

import pytest
import torch

from halign.data_gen import toy_video
from halign.data_gen.toy_video_checkpoint import (
    QUICK_VIDEO_CHECKPOINT, ToyVideoCheckpointConfig, build_video_processor, get_toy_video_checkpoint,
    video_tokens_per_frame,
)

# The standard configuration's key names its cache folder: a change to the recipe or its defaults must be
# deliberate (bump VIDEO_BUILDER_VERSION when the recipe changes), and then this line changes with it.
STANDARD_KEY = "f6d657d690887c88"


@pytest.fixture(scope="module")
def quick_video_checkpoint(tmp_path_factory):
    cfg = ToyVideoCheckpointConfig(**QUICK_VIDEO_CHECKPOINT)
    return cfg, get_toy_video_checkpoint(cfg, cache_dir=tmp_path_factory.mktemp("video_cache"), progress=False,
                                         log=lambda *_: None)


def test_tokenizer_round_trips_every_text_of_the_moving_world():
    cfg = ToyVideoCheckpointConfig()
    tok = build_video_processor(cfg).tokenizer
    for clip in toy_video.make_clips(cfg.video, "eval", 20):
        texts = [toy_video.detailed_caption(cfg.video, clip), clip.noisy_caption, toy_video.VIDEO_PROMPT]
        for text in texts + [q["question"] for q in clip.questions]:
            ids = tok(" " + text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids, text
            assert tok.decode(ids).strip() == text


def test_chat_template_has_a_video_part_and_is_prefix_consistent():
    processor = build_video_processor(ToyVideoCheckpointConfig())
    user = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video."}]}]
    prompt = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = processor.apply_chat_template(user + [{"role": "assistant", "content": "a red star."}], tokenize=False)
    assert prompt == "USER:<video> Describe the video.ASSISTANT:"
    assert full.startswith(prompt) and full.endswith("</s>")


def test_the_standard_configuration_key_is_stable():
    cfg = ToyVideoCheckpointConfig()
    assert cfg.key() == STANDARD_KEY
    assert video_tokens_per_frame(cfg) == 9 and cfg.video == toy_video.ToyVideoConfig()


def test_a_patch_size_that_does_not_pool_is_refused():
    with pytest.raises(ValueError, match="patch_size 16 must tile"):
        ToyVideoCheckpointConfig(patch_size=16)  # 48 px / 16 = 3 patches a side: 2 x 2 pooling cannot tile it


def test_quick_build_saves_reloads_and_reads_a_clip(quick_video_checkpoint, tmp_path):
    from transformers import AutoModelForImageTextToText

    from halign.align.processor import load_processor
    from halign.align.video_processor import build_video_inputs
    from halign.data_gen.messages import load_video, user_messages

    cfg, checkpoint = quick_video_checkpoint
    record = json.loads((checkpoint / "halign_build.json").read_text())
    assert record["key"] == cfg.key() and record["steps"] == cfg.sft_steps and set(record["files"])
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    processor = load_processor(checkpoint)
    assert type(model).__name__ == "LlavaNextVideoForConditionalGeneration"
    clip = toy_video.write_clips(cfg.video, "eval", 1, tmp_path / "clips")[0]
    text = processor.apply_chat_template(user_messages(clip), add_generation_prompt=True, tokenize=False)
    inputs = build_video_inputs(processor, [text], [load_video(clip)], add_special_tokens=False)
    video_tokens = (inputs["input_ids"] == model.config.video_token_index).sum().item()
    assert video_tokens == video_tokens_per_frame(cfg) * len(clip["video"])
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]


def test_halign_sample_generates_from_toy_clips(quick_video_checkpoint, tmp_path):
    from halign.data_gen.io import read_records, write_jsonl
    from halign.data_gen.sample import SampleConfig, run

    cfg, checkpoint = quick_video_checkpoint
    records = toy_video.write_clips(cfg.video, "eval", 2, tmp_path / "clips")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", records)
    candidates = run(SampleConfig(model=str(checkpoint), k=2, max_new_tokens=4, batch_size=2), prompts,
                     tmp_path / "sample", progress=False)
    sampled = read_records(candidates)
    assert {c["prompt_id"] for c in sampled} == {r["id"] for r in records}
    assert all(c["text"] for c in sampled)


def test_the_cache_is_reused_and_a_corrupted_build_rebuilt(quick_video_checkpoint):
    from halign.data_gen.toy_checkpoint import verify_checkpoint

    cfg, checkpoint = quick_video_checkpoint
    assert checkpoint.name == f"toy-llava-video-{cfg.key()}" and verify_checkpoint(checkpoint) is None
    stamp = (checkpoint / "model.safetensors").stat().st_mtime_ns
    cache = checkpoint.parent
    assert get_toy_video_checkpoint(cfg, cache_dir=cache, progress=False, log=lambda *_: None) == checkpoint
    assert (checkpoint / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100] + b"\0" * 100)
    messages = []
    assert get_toy_video_checkpoint(cfg, cache_dir=cache, progress=False, log=messages.append) == checkpoint
    assert verify_checkpoint(checkpoint) is None
    assert any("toy video checkpoint" in m and "cannot be trusted" in m for m in messages)
