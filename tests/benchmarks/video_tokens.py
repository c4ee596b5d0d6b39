"""Tokens per clip: native video vs frames-as-images, at released checkpoints' settings.

    python tests/benchmarks/video_tokens.py

Qwen2-VL / Qwen2.5-VL (14 px patches, 2x2 merge, 2 frames per temporal patch; pixel limits of the released
Qwen2.5-VL preprocessor config: 3,136 to 12,845,056 pixels). Native: each clip through
align/video_processor.process_video (frames resized once, paired in time). Frames-as-images: each frame through
the same resize rule as an image (an image is its own frame repeated over the temporal patch).

LLaVA-NeXT-Video-7B (recipes/llava_hound_video.yaml; CLIP ViT-L/14 at 336 px, so frames are cropped to
336 x 336: 576 patches, average-pooled 2x2 to 144 tokens per frame). Native: process_video with that video
processor. Frames-as-images: each frame through the checkpoint's LLaVA-NeXT image processor (shortest edge
336, anyres tiles on its five grid pinpoints), counted by transformers' own processor (`replace_image_token`).

Both counts are the language-model tokens of the clip (Qwen's vision start / end markers are added per video or
per image on top). Counted on random frames; nothing is estimated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models builds processors offline

from halign.align.video_processor import QWEN_DEFAULTS, VideoConfig, process_video, video_config  # noqa: E402

CLIPS = [(8, 336, 336), (16, 336, 336), (8, 640, 360), (32, 448, 448)]
# The recipe's clips: at most 16 frames (max_frames), at the usual frame sizes of ShareGPTVideo's sources.
LLAVA_CLIPS = [(8, 336, 336), (16, 336, 336), (16, 360, 640), (16, 480, 640), (32, 360, 640)]
LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def qwen_config(min_pixels: int, max_pixels: int) -> VideoConfig:
    d = QWEN_DEFAULTS
    return VideoConfig(family="qwen2_vl", do_resize=True, resample=d["resample"], do_rescale=True,
                       rescale_factor=d["rescale_factor"], do_normalize=True, image_mean=tuple(d["image_mean"]),
                       image_std=tuple(d["image_std"]), size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                       patch_size=14, temporal_patch_size=2, merge_size=2)


def llava_next_video_processor():
    """LLaVA-NeXT-Video-7B's processor settings on an offline word-level tokenizer (only its two placeholder
    tokens matter for counting)."""
    import tiny_models
    from transformers import LlavaNextVideoProcessor

    named = {"image_token": "<image>", "video_token": "<video>"}
    tokenizer = tiny_models.build_tokenizer(list(named.values()), "", extra_special_tokens=named)
    sizes = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    images = tiny_models.pil_image_processor("llava_next", "LlavaNextImageProcessorPil",
                                             image_grid_pinpoints=LLAVA_PINPOINTS, **sizes)
    video = tiny_models.video_processor("LlavaNextVideoVideoProcessor", **sizes)
    return tiny_models.make_processor(LlavaNextVideoProcessor, video_processor=video, image_processor=images,
                                      tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                                      num_additional_image_tokens=1)


def llava_next_video_counts(processor, clip: torch.Tensor) -> tuple[int, int, int]:
    """(native video tokens, tokens of one frame as an image, frames) for a (T, H, W, 3) uint8 clip."""
    from PIL import Image

    native = process_video(clip, video_config(processor)).num_video_tokens
    frame = Image.fromarray(clip[0].numpy())
    data = processor.image_processor([frame], return_tensors="pt")
    per_image = processor.replace_image_token(data, image_idx=0).count(processor.image_token)
    return native, per_image, clip.shape[0]


def main() -> int:
    config = qwen_config(3136, 12845056)
    generator = torch.Generator().manual_seed(0)
    print("Qwen2.5-VL")
    print("| clip (frames x h x w) | native video: grid (t, h, w) -> tokens | frames as images: tokens | ratio |")
    print("| --- | --- | --- | --- |")
    for frames, height, width in CLIPS:
        clip = torch.randint(0, 256, (frames, height, width, 3), generator=generator, dtype=torch.uint8)
        native = process_video(clip, config)
        # One frame as an image: the same resize rule, its single frame repeated to fill the temporal patch.
        per_image = process_video(clip[:1].repeat(2, 1, 1, 1), config).num_video_tokens
        as_images = frames * per_image
        grid = tuple(int(v) for v in native.video_grid_thw)
        print(f"| {frames} x {height} x {width} | {grid} -> {native.num_video_tokens} | {frames} x {per_image} = "
              f"{as_images} | {as_images / native.num_video_tokens:.1f}x |")
    processor = llava_next_video_processor()
    print("\nLLaVA-NeXT-Video-7B (recipes/llava_hound_video.yaml)")
    print("| clip (frames x h x w) | native video: tokens | frames as images (anyres): tokens | ratio |")
    print("| --- | --- | --- | --- |")
    for frames, height, width in LLAVA_CLIPS:
        clip = torch.randint(0, 256, (frames, height, width, 3), generator=generator, dtype=torch.uint8)
        native, per_image, _ = llava_next_video_counts(processor, clip)
        as_images = frames * per_image
        print(f"| {frames} x {height} x {width} | {frames} x {native // frames} = {native} | {frames} x {per_image} = "
              f"{as_images} | {as_images / native:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
