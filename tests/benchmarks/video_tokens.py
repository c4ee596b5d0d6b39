"""Tokens per clip: native video vs frames-as-images, for Qwen2-VL / Qwen2.5-VL at the released checkpoints'
settings (14 px patches, 2x2 merge, 2 frames per temporal patch; pixel limits of the released Qwen2.5-VL
preprocessor config: 3,136 to 12,845,056 pixels).

    python tests/benchmarks/video_tokens.py

Native: each clip through align/video_processor.process_video (frames resized once, paired in time).
Frames-as-images: each frame through the same resize rule as an image (an image is its own frame repeated
over the temporal patch). Both counts are the language-model tokens of the clip (the vision start / end markers
are added per video or per image on top). Counted on random frames; nothing is estimated.
"""

from __future__ import annotations

import torch

from halign.align.video_processor import QWEN_DEFAULTS, VideoConfig, process_video

CLIPS = [(8, 336, 336), (16, 336, 336), (8, 640, 360), (32, 448, 448)]


def qwen_config(min_pixels: int, max_pixels: int) -> VideoConfig:
    d = QWEN_DEFAULTS
    return VideoConfig(family="qwen2_vl", do_resize=True, resample=d["resample"], do_rescale=True,
                       rescale_factor=d["rescale_factor"], do_normalize=True, image_mean=tuple(d["image_mean"]),
                       image_std=tuple(d["image_std"]), size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                       patch_size=14, temporal_patch_size=2, merge_size=2)


def main() -> int:
    config = qwen_config(3136, 12845056)
    generator = torch.Generator().manual_seed(0)
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
