"""Recipe validation of video sources (recipes/config.py): the video keys of data_gen/sources.py specs
(max_frames, fps, video_fps, frame_dir, as) and the engine's toy_video source are checked before any model
loads, each error naming the key; toy eval clips must come from a stream no judge, SFT or gate reads."""

import pytest

from halign.recipes.config import resolve


def recipe(source, **extra):
    return {"model": "some/checkpoint", "source": source, "train": None, "eval": None, **extra}


def test_video_source_keys_are_accepted():
    spec = {"type": "video", "path": "clips.jsonl", "max_frames": 8, "fps": 2, "video_fps": 4.0,
            "frame_dir": "frames", "as": "video", "image_root": "root", "check": "none"}
    assert resolve(recipe(spec))["source"] == spec
    assert resolve(recipe({"type": "json", "path": "r.json", "max_frames": 4}))["source"]["max_frames"] == 4


@pytest.mark.parametrize("source, message", [
    ({"type": "video", "path": "c.jsonl", "max_frame": 8}, "unknown key source.max_frame"),
    ({"type": "video", "path": "c.jsonl", "max_frames": 0}, "source.max_frames must be a positive integer"),
    ({"type": "video", "path": "c.jsonl", "max_frames": "all"}, "source.max_frames must be"),
    ({"type": "video", "path": "c.jsonl", "fps": -1}, "source.fps must be a positive number"),
    ({"type": "video", "path": "c.jsonl", "video_fps": "fast"}, "source.video_fps must be"),
    ({"type": "video", "path": "c.jsonl", "as": "clip"}, "source.as must be one of"),
    ({"type": "json", "path": "r.json", "as": "video"}, "source.as must be one of"),
    ({"type": "coco", "images": "img", "captions": "c.json", "max_frames": 4}, "unknown key source.max_frames"),
    ({"type": "toy_video", "n": 0}, "source.n must be a positive integer"),
    ({"type": "toy_video", "as": "frames"}, "source.as must be one of"),
    ({"type": "toy_video", "clips": 3}, "unknown key source.clips"),
])
def test_bad_video_source_keys_are_named(source, message):
    with pytest.raises(ValueError, match=message):
        resolve(recipe(source))


def test_toy_video_source_defaults_and_rounds():
    from halign.recipes.inputs import round_source

    src = resolve(recipe({"type": "toy_video", "as": "video", "n": 5}))["source"]
    assert src == {"type": "toy_video", "split": "dpo", "n": 5, "start": 0, "as": "video"}
    assert round_source(src, 3)["start"] == 10  # round 3: the third slice of 5 clips


@pytest.mark.parametrize("split", ["dpo", "sft", "val"])
def test_toy_eval_clips_must_be_held_out(split):
    cfg = {"model": "toy_video", "source": {"type": "toy_video", "split": "dpo"},
           "eval": {"source": {"type": "toy_video", "split": split}, "benchmark": "toy_video", "rounds": "kept"}}
    with pytest.raises(ValueError, match="eval.source.split: the eval clips must be held out"):
        resolve(cfg)


def test_video_checkpoint_settings_are_checked_against_its_config():
    cfg = {"model": "toy_video", "toy_checkpoint": {"sft_clips": 24}, "source": {"type": "toy_video"},
           "train": None, "eval": None}
    assert resolve(cfg)["toy_checkpoint"] == {"sft_clips": 24}
    with pytest.raises(ValueError, match="unknown key toy_checkpoint.sft_scenes"):
        resolve({**cfg, "toy_checkpoint": {"sft_scenes": 24}})  # the image checkpoint's key
