"""`halign.align.processor.load_processor`: processors that want a video processor load image-only without
torchvision, process images and text exactly as the real processor does, and save the checkpoint's original
video-processor config back unchanged."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils import is_torchvision_available

from halign.align.model import load_policy
from halign.align.processor import ImageOnlyVideoProcessor, load_processor, processor_class
import tiny_models  # tests/ is on sys.path (pytest rootdir-less "prepend" import mode)

image_only = pytest.mark.skipif(is_torchvision_available(),
                                reason="with torchvision the checkpoint loads its real video processor")
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe the image ."}]}]


@pytest.fixture(scope="module")
def qwen_checkpoint(tmp_path_factory):
    return tiny_models.save_family("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl") / "ckpt")


def read_json(path):
    return json.loads(path.read_text())


def image(color=(220, 30, 30)):
    picture = Image.new("RGB", (32, 32), (255, 255, 255))
    picture.paste(color, (4, 4, 20, 20))
    return picture


@image_only
def test_load_policy_builds_the_processor_image_only(qwen_checkpoint):
    from transformers import Qwen2VLProcessor

    model, processor = load_policy(qwen_checkpoint)
    assert type(processor) is Qwen2VLProcessor  # a plain instance of the checkpoint's class, not a stand-in
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    video = processor.video_processor
    assert isinstance(video, ImageOnlyVideoProcessor)
    # The checkpoint's video settings are readable attributes, as on the real video processor.
    assert (video.merge_size, video.patch_size, video.temporal_patch_size) == (2, 4, 2)
    assert processor.image_processor.backend == "pil"


def test_llava_has_no_video_processor_and_loads_through_auto_processor(tmp_path):
    from transformers import AutoProcessor, LlavaProcessor

    ckpt = tiny_models.save_family("llava", tmp_path / "ckpt")
    assert processor_class(ckpt) is LlavaProcessor
    loaded, auto = load_processor(ckpt), AutoProcessor.from_pretrained(ckpt)
    assert type(loaded) is type(auto)
    assert loaded.to_dict() == auto.to_dict()


@image_only
def test_videos_fail_with_what_to_install(qwen_checkpoint):
    processor = load_processor(qwen_checkpoint)
    frames = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ImportError, match="loaded image-only because torchvision is not installed.*pip install torchvision"):
        processor(text=["<|vision_start|><|video_pad|><|vision_end|> describe"], videos=[frames], return_tensors="pt")


def test_save_pretrained_writes_the_original_configs_back(qwen_checkpoint, tmp_path):
    processor = load_processor(qwen_checkpoint)
    processor.save_pretrained(tmp_path)
    original, saved = read_json(qwen_checkpoint / "processor_config.json"), read_json(tmp_path / "processor_config.json")
    assert saved["video_processor"]["video_processor_type"] == "Qwen2VLVideoProcessor"
    if not is_torchvision_available():
        assert saved["video_processor"] == original["video_processor"]
        assert saved == original
    # Reloads as the same processor (with the real video processor wherever torchvision is installed).
    assert load_processor(tmp_path).to_dict() == processor.to_dict()


def test_image_only_video_processor_keeps_its_config_verbatim(tmp_path):
    config = {"video_processor_type": "SmolVLMVideoProcessor", "fps": 1, "num_frames": 64,
              "size": {"longest_edge": 512}, "processor_class": "SmolVLMProcessor"}
    video = ImageOnlyVideoProcessor(**config)
    assert video.to_dict() == config
    assert (video.fps, video.num_frames) == (1, 64)  # read by SmolVLMProcessor.apply_chat_template
    video.save_pretrained(tmp_path)
    assert read_json(tmp_path / "video_preprocessor_config.json") == config


@pytest.mark.parametrize("family", ["qwen2_vl", "smolvlm"])
def test_image_and_text_outputs_match_the_processor_built_by_hand(family, tmp_path):
    by_hand = tiny_models.build_family(family)[1]
    by_hand.save_pretrained(tmp_path)
    loaded = load_processor(tmp_path)
    text = loaded.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert text == by_hand.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    images = [[image()], [image((30, 40, 220))]]
    got = loaded(text=[text, text], images=images, return_tensors="pt", padding=True)
    want = by_hand(text=[text, text], images=images, return_tensors="pt", padding=True)
    assert sorted(got) == sorted(want)
    expected = {"qwen2_vl": ["input_ids", "attention_mask", "pixel_values", "image_grid_thw"],
                "smolvlm": ["input_ids", "attention_mask", "pixel_values"]}[family]
    assert set(expected) <= set(got)
    for key in got:
        assert torch.equal(got[key], want[key]), key
    image_id = loaded.tokenizer.convert_tokens_to_ids(loaded.image_token)
    assert (got["input_ids"] == image_id).any()


def test_image_only_processor_pickles_as_its_own_class(qwen_checkpoint):
    processor = load_processor(qwen_checkpoint)
    copy = pickle.loads(pickle.dumps(processor))  # data loader workers and dataset fingerprints pickle it
    assert type(copy) is type(processor)
    assert copy.to_dict() == processor.to_dict()


@image_only
def test_transformers_still_rejects_every_video_processor_without_torchvision():
    """Why `construct_image_only` exists. If this starts failing, transformers accepts a BaseVideoProcessor
    without torchvision again and `_accepting_image_only` can go."""
    from transformers import Qwen2VLProcessor

    by_hand = tiny_models.build_family("qwen2_vl")[1]
    with pytest.raises((AttributeError, TypeError, ImportError)):
        Qwen2VLProcessor(image_processor=by_hand.image_processor, tokenizer=by_hand.tokenizer,
                         video_processor=by_hand.video_processor)
