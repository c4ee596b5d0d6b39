"""Native video inputs for Qwen2-VL / Qwen2.5-VL and LLaVA-NeXT-Video without torchvision.

transformers' video processors import torchvision, and the torchvision wheel matching a CPU torch often fails
to import (halign's `load_processor` then builds such processors with an `ImageOnlyVideoProcessor`, see
`align/processor.py`). This module turns a clip (a list of PIL frames, or a uint8 array T x H x W x C) into
the tensors the family's video processor would produce, reading every setting from the processor's own
video-processor config, and builds the model inputs around them:

  video_config(processor)               the settings (`VideoConfig`), from a real video processor or an
                                        ImageOnlyVideoProcessor, with the family's class defaults for the
                                        keys a config leaves out
  process_video(frames, config)         `ProcessedVideo`: pixel_values_videos, video_grid_thw (Qwen),
                                        the number of video tokens the prompt must hold
  build_video_inputs(processor, text, videos)
                                        what `processor(text=..., videos=...)` returns: the prompt's video
                                        tokens expanded, tokenized, plus the video tensors (and
                                        mm_token_type_ids / second_per_grid_ts where the family has them)

The steps follow transformers' processors (5.x): frames to channels-first uint8, resize, (LLaVA-NeXT-Video)
center crop, rescale + normalize fused as (x - mean/rescale) / (std/rescale) in float32, then (Qwen) the
patch layout. Resizing is where a reimplementation can drift. transformers resizes the *uint8* tensor with
torchvision's tensor resize (antialias on), which on CPU calls torch's own uint8 interpolation kernel for
bicubic (and for bilinear on AVX2 / AVX512 / ARM64 CPUs), and otherwise interpolates in float32, clamps, rounds and
casts back. Both are plain `torch.nn.functional.interpolate` calls, made here the same way, so on CPU the
output is bit-identical to transformers' (measured: see tests/test_video_processor.py). PIL's resize is a
different filter and is never used. On GPU transformers takes the float path for bicubic; this module always
runs on CPU, so a GPU-processed batch may differ by one uint8 step in a few pixels (about 0.015 after
normalisation).
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

QWEN_VIDEO_PROCESSORS = ("Qwen2VLVideoProcessor",)  # Qwen2.5-VL uses Qwen2-VL's video processor
LLAVA_NEXT_VIDEO_PROCESSORS = ("LlavaNextVideoVideoProcessor",)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN / _STD: both families' class defaults
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PIL_BILINEAR, PIL_BICUBIC, PIL_NEAREST = 2, 3, 0  # PILImageResampling codes as written in configs

# Class defaults of the two families' video processors (transformers 5.x), used for keys a saved config omits.
QWEN_DEFAULTS = dict(do_resize=True, resample=PIL_BICUBIC, do_rescale=True, rescale_factor=1 / 255,
                     do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True,
                     size={"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
                     patch_size=14, temporal_patch_size=2, merge_size=2, cap_pixels_per_frame=False,
                     max_video_tokens=128000)
LLAVA_NEXT_VIDEO_DEFAULTS = dict(do_resize=True, resample=PIL_BICUBIC, do_rescale=True, rescale_factor=1 / 255,
                                 do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                                 do_convert_rgb=True, size={"shortest_edge": 224}, default_to_square=False,
                                 do_center_crop=True, crop_size={"height": 224, "width": 224})


@dataclass(frozen=True)
class VideoConfig:
    """A family's video-processing settings. `family` is "qwen2_vl" or "llava_next_video"."""

    family: str
    do_resize: bool
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: tuple[float, ...]
    image_std: tuple[float, ...]
    size: dict
    # Qwen2-VL / Qwen2.5-VL
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    cap_pixels_per_frame: bool = False
    max_video_tokens: int = 128000
    # LLaVA-NeXT-Video: the vision tower's patch size comes from the processor, not the video processor
    crop_size: dict = field(default_factory=dict)
    do_center_crop: bool = False
    default_to_square: bool = False
    tower_patch_size: int | None = None


@dataclass
class ProcessedVideo:
    pixel_values_videos: torch.Tensor  # Qwen: (patches, C*t*p*p); LLaVA-NeXT-Video: (T, C, H, W)
    num_video_tokens: int | None  # None for LLaVA-NeXT-Video when the tower's patch size is unknown
    video_grid_thw: torch.Tensor | None = None  # Qwen only: (3,) = (t, h, w) in patches


def video_config(processor) -> VideoConfig:
    """The video settings of `processor` (a multimodal processor or its video processor)."""
    video_processor = getattr(processor, "video_processor", processor)
    config = dict(video_processor.to_dict())
    name = config.get("video_processor_type") or type(video_processor).__name__
    if name in QWEN_VIDEO_PROCESSORS:
        merged = {**QWEN_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        size = dict(merged["size"])
        # As Qwen2VLVideoProcessor.__init__: min_pixels / max_pixels, where given, override the size dict.
        if config.get("min_pixels") is not None:
            size["shortest_edge"] = config["min_pixels"]
        if config.get("max_pixels") is not None:
            size["longest_edge"] = config["max_pixels"]
        return VideoConfig(family="qwen2_vl", size=size, **_common(merged),
                           patch_size=int(merged["patch_size"]), merge_size=int(merged["merge_size"]),
                           temporal_patch_size=int(merged["temporal_patch_size"]),
                           cap_pixels_per_frame=bool(merged["cap_pixels_per_frame"]),
                           max_video_tokens=int(merged["max_video_tokens"]))
    if name in LLAVA_NEXT_VIDEO_PROCESSORS:
        from transformers.image_processing_utils import get_size_dict

        merged = {**LLAVA_NEXT_VIDEO_DEFAULTS, **{k: v for k, v in config.items() if v is not None}}
        square = bool(merged["default_to_square"])
        tower_patch = getattr(processor, "patch_size", None) if processor is not video_processor else None
        return VideoConfig(family="llava_next_video", **_common(merged),
                           size=get_size_dict(merged["size"], default_to_square=square),
                           crop_size=get_size_dict(merged["crop_size"], param_name="crop_size"),
                           do_center_crop=bool(merged["do_center_crop"]), default_to_square=square,
                           tower_patch_size=tower_patch)
    raise ValueError(f"no torchvision-free video path for {name!r}; supported: "
                     f"{', '.join(QWEN_VIDEO_PROCESSORS + LLAVA_NEXT_VIDEO_PROCESSORS)}")


def _common(merged: dict) -> dict:
    return dict(do_resize=bool(merged["do_resize"]), resample=int(merged["resample"]),
                do_rescale=bool(merged["do_rescale"]), rescale_factor=float(merged["rescale_factor"]),
                do_normalize=bool(merged["do_normalize"]), image_mean=tuple(merged["image_mean"]),
                image_std=tuple(merged["image_std"]))


# ---------------------------------------------------------------------------------------------- frames

def frames_to_tensor(frames) -> torch.Tensor:
    """A clip as a (T, 3, H, W) tensor, from PIL frames or arrays T x H x W x C (T x H x W: grey frames).

    As in transformers: grey frames are repeated to three channels, transparent ones blended on white; PIL
    modes other than RGB, RGBA and L are converted to RGB first.
    """
    if isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("a video needs at least one frame")
        arrays = [np.asarray(f if f.mode in ("RGB", "RGBA", "L") else f.convert("RGB"))
                  if isinstance(f, Image.Image) else np.asarray(f) for f in frames]
        video = np.stack(arrays)
    else:
        video = np.asarray(frames)
    if video.ndim == 3:  # grey frames
        video = video[..., None]
    if video.ndim != 4 or video.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected frames T x H x W x C (C = 1, 3 or 4), got shape {video.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(video)).permute(0, 3, 1, 2).contiguous()
    if tensor.shape[1] == 1:
        return tensor.repeat(1, 3, 1, 1)
    if tensor.shape[1] == 4:  # blend transparency on white, as transformers does
        alpha = tensor[:, 3:] / 255.0
        return (1 - alpha) * 255 + alpha * tensor[:, :3]
    return tensor


def resize(video: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """`video` (T, C, H, W) resized as transformers' torchvision backend resizes a tensor on CPU."""
    if tuple(video.shape[-2:]) == (height, width):
        return video  # torchvision returns the input untouched at the same size
    modes = {PIL_BICUBIC: "bicubic", PIL_BILINEAR: "bilinear", PIL_NEAREST: "nearest-exact"}
    if resample not in modes:
        raise ValueError(f"resample {resample} is not supported here (bicubic, bilinear, nearest)")
    mode = modes[resample]
    smooth = mode in ("bicubic", "bilinear")
    options = dict(size=[height, width], mode=mode, antialias=smooth, align_corners=False if smooth else None)
    if video.dtype != torch.uint8:
        return F.interpolate(video, **options)
    # torchvision's rule: its uint8 bilinear kernel is used only where the CPU has it fast.
    native_uint8 = mode != "bilinear" or (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                                          or platform.machine() in ("aarch64", "arm64"))
    if native_uint8:
        return F.interpolate(video, **options)
    resized = F.interpolate(video.float(), **options)
    return resized.round_().to(torch.uint8)  # bilinear cannot overshoot [0, 255]: no clamp needed


def rescale_and_normalize(video: torch.Tensor, config: VideoConfig) -> torch.Tensor:
    """float32 pixels; rescale folded into mean and std when both are on, as transformers computes it."""
    if config.do_normalize:
        scale = 1.0 / config.rescale_factor if config.do_rescale else 1.0
        mean = torch.tensor(config.image_mean) * scale
        std = torch.tensor(config.image_std) * scale
        return video.to(torch.float32).sub(mean[:, None, None]).div(std[:, None, None])
    if config.do_rescale:
        return video * config.rescale_factor
    return video


# ---------------------------------------------------------------------------------------------- Qwen2-VL

def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's target size: both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect
    ratio kept as closely as the rounding allows."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be under 200, got {max(height, width) / min(height, width)}")
    new_height, new_width = round(height / factor) * factor, round(width / factor) * factor
    if new_height * new_width > max_pixels:
        shrink = math.sqrt(height * width / max_pixels)
        new_height = max(factor, math.floor(height / shrink / factor) * factor)
        new_width = max(factor, math.floor(width / shrink / factor) * factor)
    elif new_height * new_width < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_height = math.ceil(height * grow / factor) * factor
        new_width = math.ceil(width * grow / factor) * factor
    return new_height, new_width


def qwen_resized_size(num_frames: int, height: int, width: int, config: VideoConfig) -> tuple[int, int]:
    factor = config.patch_size * config.merge_size
    max_pixels = config.size["longest_edge"]
    if config.cap_pixels_per_frame:
        # Each frame gets an even share of a whole-video pixel budget, never below 1.05 x the minimum.
        budget = int(config.max_video_tokens * factor * factor * 0.9)
        max_pixels = max(min(max_pixels, budget * config.temporal_patch_size // num_frames),
                         int(config.size["shortest_edge"] * 1.05))
    return smart_resize(height, width, factor, config.size["shortest_edge"], max_pixels)


def qwen_patches(video: torch.Tensor, config: VideoConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(patches, grid_thw): the flat patch rows Qwen's vision tower reads, in its order.

    Frames are padded to a multiple of temporal_patch_size by repeating the last one. Rows are ordered by
    time, then by merge_size x merge_size block (row-major), then within the block; each row holds
    channel, then time-in-patch, then the patch_size x patch_size pixels.
    """
    t, p, m = config.temporal_patch_size, config.patch_size, config.merge_size
    if pad := -video.shape[0] % t:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    frames, channels, height, width = video.shape
    grid_t, grid_h, grid_w = frames // t, height // p, width // p
    blocks = video.reshape(grid_t, t, channels, grid_h // m, m, p, grid_w // m, m, p)
    # axes: 0 grid_t, 1 t, 2 c, 3 h-block, 4 h-in-block, 5 py, 6 w-block, 7 w-in-block, 8 px
    ordered = blocks.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    patches = ordered.reshape(grid_t * grid_h * grid_w, channels * t * p * p)
    return patches, torch.tensor([grid_t, grid_h, grid_w])


# ---------------------------------------------------------------------------------------------- LLaVA-NeXT-Video

def shortest_edge_size(height: int, width: int, shortest: int) -> tuple[int, int]:
    """The short side becomes `shortest`, the long side scaled and truncated (transformers' rule)."""
    short, long = min(height, width), max(height, width)
    new_long = int(shortest * long / short)
    return (new_long, shortest) if width <= height else (shortest, new_long)


def center_crop(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre (top/left offsets truncated); a side smaller than the crop is zero-padded first."""
    frame_h, frame_w = video.shape[-2:]
    if height > frame_h or width > frame_w:
        pad_w, pad_h = max(width - frame_w, 0), max(height - frame_h, 0)
        video = F.pad(video, [pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2])
        frame_h, frame_w = video.shape[-2:]
    top, left = int((frame_h - height) / 2.0), int((frame_w - width) / 2.0)
    return video[..., top:top + height, left:left + width]


def llava_next_video_resized_size(height: int, width: int, config: VideoConfig) -> tuple[int, int]:
    size = config.size
    if size.get("shortest_edge") and not size.get("longest_edge"):
        return shortest_edge_size(height, width, size["shortest_edge"])
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    raise ValueError(f"unsupported LLaVA-NeXT-Video size {size}")


# ---------------------------------------------------------------------------------------------- entry points

def process_video(frames, config: VideoConfig) -> ProcessedVideo:
    """One clip through the family's video processing; see the module docstring for the steps."""
    video = frames_to_tensor(frames)
    num_frames, _, height, width = video.shape
    if config.family == "qwen2_vl":
        if config.do_resize:
            video = resize(video, *qwen_resized_size(num_frames, height, width, config), config.resample)
        patches, grid = qwen_patches(rescale_and_normalize(video, config), config)
        return ProcessedVideo(patches, int(grid.prod()) // config.merge_size ** 2, grid)
    if config.do_resize:
        video = resize(video, *llava_next_video_resized_size(height, width, config), config.resample)
    if config.do_center_crop:
        video = center_crop(video, config.crop_size["height"], config.crop_size["width"])
    pixels = rescale_and_normalize(video, config)
    return ProcessedVideo(pixels, llava_next_video_tokens(pixels, config))


def llava_next_video_tokens(pixels: torch.Tensor, config: VideoConfig) -> int | None:
    """Patches per frame, divided by 4 for the 2x2 average pooling of video features, times frames."""
    if not config.tower_patch_size:
        return None  # a bare video processor does not know the vision tower's patch size
    num_frames, _, height, width = pixels.shape
    per_frame = (height // config.tower_patch_size) * (width // config.tower_patch_size)
    return per_frame // 4 * num_frames


def build_video_inputs(processor, text, videos, images=None, fps: float | list | None = None,
                       return_tensors: str = "pt", **tokenizer_kwargs):
    """`processor(text=text, videos=videos, images=images)` for Qwen2-VL / Qwen2.5-VL / LLaVA-NeXT-Video,
    with the videos processed here, so it works where the processor's video processor cannot run.

    `text` holds one video token per video (as the chat template renders a {"type": "video"} part), in the
    order of `videos`; each becomes the right number of video tokens. Images, if any, go through the
    processor's own image processor. `fps` (of the sampled frames; one value, or one per video) sets
    Qwen2.5-VL's second_per_grid_ts; unknown, transformers assumes 24. `tokenizer_kwargs` (padding_side,
    add_special_tokens) go to the tokenizer call.
    """
    from transformers.feature_extraction_utils import BatchFeature

    texts = [text] if isinstance(text, str) else list(text)
    config = video_config(processor)
    processed = [process_video(frames, config) for frames in videos]
    if any(item.num_video_tokens is None for item in processed):
        raise ValueError("the processor has no patch_size: LLaVA-NeXT-Video's video token count needs it")
    video_token = processor.video_token
    video_replacements = [video_token * item.num_video_tokens for item in processed]
    image_data, image_replacements = {}, []
    if images:
        image_data = processor.image_processor(images, return_tensors=return_tensors)
        image_replacements = [processor.replace_image_token(image_data, image_idx=i) for i in range(len(images))]
    found = sum(t.count(video_token) for t in texts)
    if found != len(videos):
        raise ValueError(f"the text holds {found} {video_token} tokens for {len(videos)} videos")
    # The processor's own expansion: each placeholder, in order, replaced by its expanded string.
    texts, _ = processor.get_text_with_replacements(texts, image_replacements, video_replacements)
    data = dict(processor.tokenizer(texts, padding=True, return_tensors=return_tensors, **tokenizer_kwargs))
    if getattr(processor, "return_mm_token_type_ids", False):
        data["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(data["input_ids"]))
    data.update(image_data)
    if config.family == "qwen2_vl":
        data["pixel_values_videos"] = torch.cat([item.pixel_values_videos for item in processed])
        data["video_grid_thw"] = torch.stack([item.video_grid_thw for item in processed])
        if "second_per_grid_ts" in getattr(processor, "model_input_names", []):
            rates = fps if isinstance(fps, (list, tuple)) else [fps] * len(processed)
            data["second_per_grid_ts"] = [config.temporal_patch_size / (rate or 24) for rate in rates]
    else:
        data["pixel_values_videos"] = llava_next_video_batch([item.pixel_values_videos for item in processed])
    return BatchFeature(data, tensor_type=return_tensors)


def llava_next_video_batch(clips: list[torch.Tensor]) -> torch.Tensor:
    """LLaVA-NeXT-Video's pixel_values_videos (videos, frames, C, H, W) for clips of (T_i, C, H, W).

    Clips of one length stack, as transformers' processor stacks them. Clips of different lengths, which
    transformers' processor cannot turn into one tensor, are laid end to end as one clip of all their frames:
    the model encodes each frame on its own (vision tower, 2x2 pooling and projector per frame) and scatters
    the features into the video tokens in order (video, frame, token), so every clip gets exactly the
    features it gets alone (tests/test_video_llava_next.py). Crop sizes make all frames the same size."""
    if len({clip.shape for clip in clips}) == 1:
        return torch.stack(clips)
    if len({clip.shape[1:] for clip in clips}) != 1:
        raise ValueError(f"LLaVA-NeXT-Video frames of one batch must share a size; got "
                         f"{sorted({tuple(clip.shape[1:]) for clip in clips})} (set do_center_crop)")
    return torch.cat(clips)[None]
