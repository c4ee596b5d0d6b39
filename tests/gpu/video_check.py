"""The device check's video processor comparison: halign's torchvision-free video inputs vs transformers' own.

On the CPU machines halign is developed on, torchvision's wheel does not import, so tests/test_video_processor.py
skips its equality tests there. GPU machines usually have a working torchvision: this check runs the same
comparison there, at the released checkpoints' processor settings (Qwen2-VL/2.5-VL: transformers' class
defaults, 14 px patches, 2-frame temporal patches, 2 x 2 merge; LLaVA-NeXT-Video-7B: frames resized to a 336 px
short side and centre-cropped to 336 x 336) on clips of the recipe's shapes (16 frames of 360 x 640 among them),
and records per clip the grid sizes, token counts and the largest absolute difference of the pixel values.
"""

from __future__ import annotations

import numpy as np

from video_clips import max_abs_diff, noise, smooth  # tests/, on the path device_check.py sets


def clips(smoke: bool) -> list[tuple[str, np.ndarray]]:
    """(name, T x H x W x 3 uint8): noise (every pixel matters) and a moving gradient (interpolation)."""
    shapes = [(4, 48, 64), (5, 45, 37)] if smoke else [(8, 360, 640), (16, 360, 640), (9, 336, 336)]
    return [clip for seed, (frames, height, width) in enumerate(shapes)
            for clip in ((f"noise {frames}x{height}x{width}", noise(frames, height, width, seed)),
                         (f"smooth {frames}x{height}x{width}", smooth(frames, height, width)))]


def check_video_processor(smoke: bool) -> dict:
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        return {"skipped": "torchvision does not import here: transformers' video processors cannot run"}
    from transformers import LlavaNextVideoVideoProcessor, Qwen2VLVideoProcessor

    from halign.align.video_processor import process_video, video_config

    results, worst = {}, 0.0
    for cap in (False, True):  # Qwen's per-frame pixel cap for long clips, off and on
        qwen = Qwen2VLVideoProcessor(cap_pixels_per_frame=cap)
        for name, clip in clips(smoke):
            expected = qwen(videos=[clip], return_tensors="pt")
            ours = process_video(clip, video_config(qwen))
            diff = max_abs_diff(ours.pixel_values_videos, expected["pixel_values_videos"])
            grid_equal = ours.video_grid_thw.tolist() == expected["video_grid_thw"][0].tolist()
            results[f"qwen cap={cap} {name}"] = {"grid": ours.video_grid_thw.tolist(), "grid_equal": grid_equal,
                                                 "tokens": ours.num_video_tokens, "max_abs_diff": diff}
            worst = max(worst, diff if grid_equal else float("inf"))
    llava = LlavaNextVideoVideoProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    for name, clip in clips(smoke):
        expected = llava(videos=[clip], return_tensors="pt")["pixel_values_videos"]
        ours = process_video(clip, video_config(llava)).pixel_values_videos[None]
        same_shape = tuple(ours.shape) == tuple(expected.shape)
        diff = max_abs_diff(ours, expected) if same_shape else float("inf")
        results[f"llava-next-video {name}"] = {"shape": list(ours.shape), "shape_equal": same_shape,
                                               "max_abs_diff": diff}
        worst = max(worst, diff)
    import torchvision

    return {"ok": worst == 0.0, "max_abs_diff": worst, "clips": results, "torchvision": torchvision.__version__}
