"""`halign.align.video_processor`: native video inputs without torchvision.

Two kinds of checks: expectations computed here by hand (grid sizes, token counts, the patch layout, the
normalisation of a constant frame, a tiny model's forward pass on the inputs), which run everywhere; and
equality with transformers' own (torchvision-based) video processors and processors, which runs wherever
torchvision imports and is skipped, saying so, elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.utils import is_torchvision_available

from halign.align.processor import ImageOnlyVideoProcessor
from halign.align.video_processor import (
    CLIP_MEAN, CLIP_STD, build_video_inputs, process_video, smart_resize, video_config,
)
import tiny_models  # tests/ is on sys.path
from video_clips import max_abs_diff, noise, smooth

needs_torchvision = pytest.mark.skipif(
    not is_torchvision_available(),
    reason="torchvision does not import here: equality with transformers' video processors is not checked "
           "(run this file where torchvision works)")
QWEN_SIZES = dict(patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 16 * 16, "longest_edge": 32 * 32})
LLAVA_VIDEO_SIZES = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
VIDEO_PROMPT = "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>describe the image .<|im_end|>\n"


def qwen_config(**overrides):
    return video_config(ImageOnlyVideoProcessor(video_processor_type="Qwen2VLVideoProcessor", **{**QWEN_SIZES, **overrides}))


# ---------------------------------------------------------------------------------------------- Qwen, by hand

def test_smart_resize_known_values():
    assert smart_resize(32, 32, 8, 256, 1024) == (32, 32)
    # 32 x 48 is over 1024 pixels: scaled by sqrt(1536 / 1024), each side floored to a multiple of 8.
    assert smart_resize(32, 48, 8, 256, 1024) == (24, 32)
    # 10 x 10 is under 256 pixels: scaled up by 1.6, each side ceiled to a multiple of 8.
    assert smart_resize(10, 10, 8, 256, 1024) == (16, 16)
    assert smart_resize(224, 224, 28, 56 * 56, 28 * 28 * 1280) == (224, 224)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 300, 8, 1, 10 ** 6)


def test_qwen_grid_and_token_count():
    out = process_video(noise(4, 32, 48), qwen_config())
    # 24 x 32 pixels in 4-pixel patches, 4 frames in 2-frame temporal patches.
    assert out.video_grid_thw.tolist() == [2, 6, 8]
    assert out.pixel_values_videos.shape == (2 * 6 * 8, 3 * 2 * 4 * 4)
    assert out.num_video_tokens == 2 * 6 * 8 // 4  # merge_size 2: four patches per token


def test_qwen_odd_frame_count_repeats_the_last_frame():
    config = qwen_config(do_resize=False, do_normalize=False, do_rescale=False)
    frames = noise(3, 16, 16)
    out = process_video(frames, config)
    padded = process_video(np.concatenate([frames, frames[-1:]]), config)
    assert out.video_grid_thw.tolist() == [2, 4, 4]
    assert torch.equal(out.pixel_values_videos, padded.pixel_values_videos)


def test_qwen_min_max_pixels_override_size():
    config = qwen_config(min_pixels=8 * 8, max_pixels=16 * 16)
    assert config.size == {"shortest_edge": 64, "longest_edge": 256}
    assert process_video(noise(2, 32, 32), config).video_grid_thw.tolist() == [1, 4, 4]


def test_qwen_constant_frame_normalises_to_the_clip_formula():
    color = (200, 100, 30)
    frames = [Image.new("RGB", (40, 24), color) for _ in range(2)]
    out = process_video(frames, qwen_config())
    values = out.pixel_values_videos.reshape(-1, 3, 2 * 4 * 4)  # each row: channel, then time and pixels
    for channel in range(3):
        expected = (color[channel] / 255 - CLIP_MEAN[channel]) / CLIP_STD[channel]
        assert torch.allclose(values[:, channel], torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_qwen_patch_layout_matches_an_explicit_loop():
    """Row order: time patch, then 2x2 merge block (row-major), then the patch inside the block; each row is
    channel, time-in-patch, pixel row, pixel column."""
    config = qwen_config(do_resize=False, do_normalize=False, do_rescale=False)
    frames = noise(4, 16, 24, seed=3)
    rows = process_video(frames, config).pixel_values_videos
    p, m, t = 4, 2, 2
    expected = []
    for gt in range(4 // t):
        for bh in range(16 // p // m):
            for bw in range(24 // p // m):
                for ih in range(m):
                    for iw in range(m):
                        h0, w0 = (bh * m + ih) * p, (bw * m + iw) * p
                        cube = frames[gt * t:(gt + 1) * t, h0:h0 + p, w0:w0 + p, :]  # t, p, p, c
                        expected.append(cube.transpose(3, 0, 1, 2).reshape(-1))
    assert torch.equal(rows, torch.tensor(np.stack(expected), dtype=rows.dtype))


def test_qwen_cap_pixels_per_frame_shrinks_long_clips():
    capped = qwen_config(cap_pixels_per_frame=True, max_video_tokens=40)
    # budget = int(40 * 8 * 8 * 0.9) = 2304 pixels per temporal patch; 16 frames -> 288 per frame
    assert process_video(noise(16, 32, 32), capped).video_grid_thw.tolist() == [8, 4, 4]
    assert process_video(noise(16, 32, 32), qwen_config()).video_grid_thw.tolist() == [8, 8, 8]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_qwen_inputs_expand_the_prompt_and_run_the_model(family):
    model, processor = tiny_models.build_family(family)
    frames = noise(3, 32, 48)
    inputs = build_video_inputs(processor, VIDEO_PROMPT, [frames], fps=2.0)
    video_id = processor.video_token_id
    assert int((inputs["input_ids"] == video_id).sum()) == 24
    assert torch.equal(inputs["mm_token_type_ids"] == 2, inputs["input_ids"] == video_id)
    assert inputs["video_grid_thw"].tolist() == [[2, 6, 8]]
    if family == "qwen2_5_vl":
        assert inputs["second_per_grid_ts"].tolist() == [1.0]  # temporal_patch_size / fps
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[:2] == inputs["input_ids"].shape and torch.isfinite(logits).all()


def test_qwen_images_and_video_in_one_prompt():
    model, processor = tiny_models.build_family("qwen2_vl")
    text = "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>describe"
    image = Image.fromarray(smooth(1, 32, 32)[0])
    inputs = build_video_inputs(processor, text, [noise(2, 32, 32)], images=[image])
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == 16  # 8 x 8 patches, 2 x 2 merged
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 16
    assert inputs["mm_token_type_ids"].tolist()[0].count(1) == 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_placeholder_count_must_match_videos():
    _, processor = tiny_models.build_family("qwen2_vl")
    with pytest.raises(ValueError, match="video_pad"):
        build_video_inputs(processor, "describe", [noise(2, 16, 16)])


# ---------------------------------------------------------------------------------------------- LLaVA-NeXT-Video

def build_llava_next_video(real_video_processor: bool = False):
    """The tiny LLaVA-NeXT-Video family (tests/tiny_models.py): CLIP tower of 8-pixel patches on 32 x 32
    frames, 4 tokens per frame; `real_video_processor`: insist on transformers' own video processor."""
    model, processor = tiny_models.build_family("llava_next_video")
    if real_video_processor:
        assert not isinstance(processor.video_processor, ImageOnlyVideoProcessor)  # torchvision imports here
    return model, processor


def test_llava_next_video_resize_crop_and_tokens():
    _, processor = build_llava_next_video(real_video_processor=False)
    config = video_config(processor)
    out = process_video(noise(3, 40, 60), config)
    # short side 40 -> 32, long side 60 -> int(32 * 60 / 40) = 48, then the centre 32 x 32
    assert out.pixel_values_videos.shape == (3, 3, 32, 32)
    assert out.num_video_tokens == (32 // 8) * (32 // 8) // 4 * 3
    constant = process_video([Image.new("RGB", (50, 40), (10, 20, 250))] * 2, config).pixel_values_videos
    expected = [(v / 255 - m) / s for v, m, s in zip((10, 20, 250), CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(constant, torch.tensor(expected)[None, :, None, None].expand_as(constant), atol=1e-5)


def test_llava_next_video_inputs_run_the_model():
    model, processor = build_llava_next_video(real_video_processor=False)
    inputs = build_video_inputs(processor, "USER: <video> describe the image . ASSISTANT:", [smooth(4, 36, 44)])
    assert inputs["pixel_values_videos"].shape == (1, 4, 3, 32, 32)
    assert int((inputs["input_ids"] == processor.video_token_id).sum()) == 4 * 4
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_llava_token_count_needs_the_processor():
    video = ImageOnlyVideoProcessor(video_processor_type="LlavaNextVideoVideoProcessor", **LLAVA_VIDEO_SIZES)
    assert process_video(noise(2, 32, 32), video_config(video)).num_video_tokens is None
    _, processor = build_llava_next_video(real_video_processor=False)
    processor.patch_size = None
    with pytest.raises(ValueError, match="patch_size"):
        build_video_inputs(processor, "USER: <video> describe", [noise(2, 32, 32)])


# ---------------------------------------------------------------------------------------------- vs transformers

CLIPS = [("noise", noise(4, 32, 48)), ("noise-odd", noise(5, 45, 37, seed=1)), ("smooth", smooth(6, 50, 70)),
         ("small", smooth(2, 9, 13)), ("same-size", noise(2, 32, 32, seed=2))]


@needs_torchvision
@pytest.mark.parametrize("name,clip", CLIPS, ids=[c[0] for c in CLIPS])
@pytest.mark.parametrize("as_pil", [False, True], ids=["array", "pil"])
def test_qwen_matches_transformers(name, clip, as_pil):
    from transformers import Qwen2VLVideoProcessor

    reference = Qwen2VLVideoProcessor(**QWEN_SIZES, cap_pixels_per_frame=False)
    frames = [Image.fromarray(f) for f in clip] if as_pil else clip
    expected = reference(videos=[frames], return_tensors="pt")
    ours = process_video(frames, video_config(reference))
    assert ours.video_grid_thw.tolist() == expected["video_grid_thw"][0].tolist()
    assert ours.pixel_values_videos.shape == expected["pixel_values_videos"].shape
    diff = max_abs_diff(ours.pixel_values_videos, expected["pixel_values_videos"])
    print(f"qwen {name} {'pil' if as_pil else 'array'}: max abs diff {diff:.3g}")
    assert diff == 0.0


@needs_torchvision
@pytest.mark.parametrize("name,clip", CLIPS, ids=[c[0] for c in CLIPS])
def test_llava_next_video_matches_transformers(name, clip):
    from transformers import LlavaNextVideoVideoProcessor

    reference = LlavaNextVideoVideoProcessor(**LLAVA_VIDEO_SIZES)
    expected = reference(videos=[clip], return_tensors="pt")["pixel_values_videos"]
    ours = process_video(clip, video_config(reference)).pixel_values_videos
    assert ours[None].shape == expected.shape
    diff = max_abs_diff(ours[None], expected)
    print(f"llava-next-video {name}: max abs diff {diff:.3g}")
    assert diff == 0.0


@needs_torchvision
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava_next_video"])
def test_full_processor_matches_transformers(family):
    if family == "llava_next_video":
        _, processor = build_llava_next_video(real_video_processor=True)
        text, kwargs = "USER: <video> describe the image . ASSISTANT:", {}
    else:
        _, processor = tiny_models.build_family(family)  # the real video processor where torchvision works
        text, kwargs = VIDEO_PROMPT, {"videos_kwargs": {"cap_pixels_per_frame": False}}
    clip = smooth(5, 40, 60)
    expected = processor(text=[text], videos=[clip], return_tensors="pt", **kwargs)
    ours = build_video_inputs(processor, text, [clip])
    assert_same_inputs(ours, expected)


@needs_torchvision
def test_qwen_images_and_video_match_transformers():
    _, processor = tiny_models.build_family("qwen2_5_vl")
    text = "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>describe"
    image, clip = Image.fromarray(smooth(1, 32, 40)[0]), noise(3, 30, 50)
    expected = processor(text=[text], images=[image], videos=[clip], return_tensors="pt",
                         videos_kwargs={"cap_pixels_per_frame": False})
    assert_same_inputs(build_video_inputs(processor, text, [clip], images=[image]), expected)


def assert_same_inputs(ours, expected):
    assert set(ours) == set(expected)
    for key in expected:
        if key == "pixel_values_videos":
            assert max_abs_diff(ours[key], expected[key]) == 0.0
        else:
            assert torch.equal(torch.as_tensor(ours[key]), torch.as_tensor(expected[key])), key


@needs_torchvision
@pytest.mark.parametrize("cap", [False, True])
def test_class_defaults_and_real_sizes_match_transformers(cap):
    """The family defaults used for keys a config omits are transformers' class defaults; checked at the
    real checkpoints' sizes (14-pixel patches, 224-pixel crops) on a VGA-shaped clip."""
    from transformers import LlavaNextVideoVideoProcessor, Qwen2VLVideoProcessor

    clip = smooth(8, 120, 160)
    qwen = Qwen2VLVideoProcessor(cap_pixels_per_frame=cap)
    assert video_config(qwen) == qwen_config_from_type_only(cap_pixels_per_frame=cap)
    expected = qwen(videos=[clip], return_tensors="pt")
    ours = process_video(clip, video_config(qwen))
    assert ours.video_grid_thw.tolist() == expected["video_grid_thw"][0].tolist()
    assert max_abs_diff(ours.pixel_values_videos, expected["pixel_values_videos"]) == 0.0

    llava = LlavaNextVideoVideoProcessor()
    bare = ImageOnlyVideoProcessor(video_processor_type="LlavaNextVideoVideoProcessor")
    assert video_config(llava) == video_config(bare)
    expected = llava(videos=[clip], return_tensors="pt")["pixel_values_videos"]
    assert max_abs_diff(process_video(clip, video_config(llava)).pixel_values_videos[None], expected) == 0.0


def qwen_config_from_type_only(**kwargs):
    return video_config(ImageOnlyVideoProcessor(video_processor_type="Qwen2VLVideoProcessor", **kwargs))


def test_grey_palette_and_transparent_frames_become_rgb():
    config = qwen_config(do_resize=False, do_normalize=False, do_rescale=False)
    grey = [Image.new("L", (16, 16), 90)] * 2
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([90, 90, 90] * 256)
    palette = [palette] * 2
    for frames in (grey, palette, np.full((2, 16, 16), 90, np.uint8)):
        assert torch.equal(process_video(frames, config).pixel_values_videos, torch.full((16, 96), 90, dtype=torch.uint8))
    # Half-transparent black on white: (1 - 0.5) * 255 + 0.5 * 0
    half = [Image.new("RGBA", (16, 16), (0, 0, 0, 128))] * 2
    assert torch.allclose(process_video(half, config).pixel_values_videos, torch.tensor(255 * (1 - 128 / 255)))
