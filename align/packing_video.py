"""Native video pairs (Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT-Video): prompts with clips, for both DPO paths.

A pair whose prompt has a video carries its clips in the dataset's `videos` column (a list of clips, each a
list of frame images) and their sampling rates in `video_fps` (one per clip; see data_gen/pairs.py). The
prompt text gets one {"type": "video"} part per clip, before its image parts, and the processor expands each
into the clip's video tokens.

Videos go through `align/video_processor.build_video_inputs` (transformers' Qwen video processing without
torchvision, equal to it on CPU: tests/test_video_processor.py) in both paths, also where torchvision is
installed: one code path in every environment (so cached reference log-probs do not depend on it), and each
clip's own fps without building the processor's video metadata:

  packed fast path   `PackedPairCollator` (align/packing.py) calls `video_prompt_inputs` for the prompts and
                     lays the video tokens out once per pair, shared by chosen and rejected like image
                     tokens (one vision pass per pair); their 3D rope positions come from
                     `mrope_prefix_positions` with the clip's time intervals (`time_intervals`).
  plain path         `VideoPreferenceCollator`: trl's DPOTrainer batch layout (prompt+chosen and
                     prompt+rejected rows, `completion_mask`), with the videos, for trl's own forward;
                     trl 1.16's vision collator passes no videos to the processor.

Qwen2.5-VL spaces a video's temporal rope positions by tokens_per_second * second_per_grid_t, where
second_per_grid_t = temporal_patch_size / fps; Qwen2-VL by 1 per temporal patch (get_rope_index in
transformers' modeling_qwen2_5_vl.py / modeling_qwen2_vl.py).

LLaVA-NeXT-Video is a plain causal decoder over merged embeddings: each frame goes through the vision tower
on its own, its patch features are average-pooled 2x2 and projected, and the features of all frames fill the
video tokens in order ((h // patch) * (w // patch) // 4 per frame; modeling_llava_next_video.py
`get_video_features`). A packed row gives it the prompt's video tokens once per pair with ordinary 1D
positions, like its image tokens; clips of different lengths in one batch are laid end to end
(`video_processor.llava_next_video_batch`), which gives each clip the features it gets alone.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

VIDEO_COLUMNS = ("videos", "video_fps")
# Model types that read native video pairs, on both DPO paths (checked in tests/test_fast_dpo_video.py and
# tests/test_video_llava_next.py).
VIDEO_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl", "llava_next_video"}


def video_pairs_unsupported(model) -> str | None:
    """None when `model` trains on native video pairs, else why not."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in VIDEO_MODEL_TYPES:
        return f"pairs with videos train {sorted(VIDEO_MODEL_TYPES)} models, not {model_type!r}"
    return None


def has_videos(examples: list[dict]) -> bool:
    return any(example.get("videos") for example in examples)


def tokens_per_second(model) -> float | None:
    """Qwen2.5-VL's temporal rope scale (vision_config.tokens_per_second); None for every other family."""
    config = model.config
    return getattr(config.vision_config, "tokens_per_second", None) if config.model_type == "qwen2_5_vl" else None


def check_video_collation(processor, mrope_merge_size: int | None, mdpo) -> None:
    """Refuse to pack video pairs where the packed rows would be wrong: mDPO (it corrupts images only), and a
    Qwen processor without 3D rope positions (`mrope_merge_size`), whose video tokens would get 1D ones."""
    from halign.align.video_processor import video_config

    if mdpo is not None:
        raise ValueError("video pairs are packed without mdpo (mDPO corrupts images, not videos)")
    family = video_config(processor).family  # fails naming the processor when it has no native video path
    if family == "qwen2_vl" and mrope_merge_size is None:
        raise ValueError("Qwen2-VL / Qwen2.5-VL video pairs need the collator's mrope_merge_size (3D rope positions)")


def video_messages(prompt, images, videos) -> list[dict]:
    """The prompt's messages with image parts filled (trl's prepare_multimodal_messages) and one
    {"type": "video"} part per clip at the start of the first user message that has none yet."""
    from trl.data_utils import prepare_multimodal_messages

    messages = prepare_multimodal_messages(prompt, images=images)
    count = len(videos or [])
    present = sum(part.get("type") == "video" for m in messages for part in m["content"] or [])
    if present not in (0, count):
        raise ValueError(f"the prompt has {present} video parts for {count} videos")
    if count and not present:
        first = next(i for i, m in enumerate(messages) if m["role"] == "user")
        content = [{"type": "video"} for _ in range(count)] + list(messages[first]["content"])
        messages = [*messages[:first], {**messages[first], "content": content}, *messages[first + 1:]]
    return messages


def video_prompt_inputs(processor, texts: list[str], examples: list[dict]):
    """`processor(text=texts, images=..., videos=...)` for rendered prompts, one per example (left-padded,
    no special tokens added, as trl tokenizes prompts), with each example's clips and fps, in order."""
    from halign.align.video_processor import build_video_inputs

    videos, fps, images = [], [], []
    for example in examples:
        clips = example.get("videos") or []
        rates = example.get("video_fps") or [None] * len(clips)
        if len(rates) != len(clips):
            raise ValueError(f"{len(clips)} videos but {len(rates)} video_fps values")
        videos += clips
        fps += rates
        images += example.get("images") or []
    return build_video_inputs(processor, texts, videos, images=images or None, fps=fps,
                              padding_side="left", add_special_tokens=False)


def time_intervals(prompts, scale: float | None):
    """Per video of a processed batch, in order: the step between its temporal rope positions, computed as
    get_rope_index computes it (tokens_per_second * second_per_grid_t for Qwen2.5-VL, 1 for Qwen2-VL)."""
    if scale is None:
        return itertools.repeat(1)
    seconds = prompts.get("second_per_grid_ts")
    if seconds is None:  # transformers' default when the processor gave none
        return itertools.repeat(scale * 1)
    return iter([scale * second for second in seconds])


@dataclass
class VideoPreferenceCollator:
    """trl.DPOTrainer's batch (its vision collator's layout: prompt+chosen rows, then prompt+rejected rows,
    flushed left, with `completion_mask`) for pairs with videos, so trl's own forward and loss run on them.

    Prompts are repeated for the two sides, so the vision tower runs twice per pair, as on trl's image path.
    With max_length, only completion tokens are cut; a prompt that reaches max_length is an error (cutting
    video tokens would leave features without placeholders).
    """

    processor: Any
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        from trl.data_utils import apply_chat_template, prepare_multimodal_messages
        from trl.trainer.utils import flush_left, pad

        texts = [apply_chat_template({"prompt": video_messages(e["prompt"], e.get("images"), e.get("videos")),
                                      "chosen": prepare_multimodal_messages(e["chosen"]),
                                      "rejected": prepare_multimodal_messages(e["rejected"])}, self.processor)
                 for e in examples]
        prompts = video_prompt_inputs(self.processor, [t["prompt"] for t in texts] * 2, examples * 2)
        tokenizer = self.processor.tokenizer
        sides = [tokenizer([t[name] for t in texts], padding=True, padding_side="right", return_tensors="pt",
                           add_special_tokens=False) for name in ("chosen", "rejected")]
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        completion_ids = torch.cat(tuple(pad([s["input_ids"] for s in sides], padding_value=pad_id)))
        completion_mask = torch.cat(tuple(pad([s["attention_mask"] for s in sides], padding_value=0)))
        prompt_mask = prompts["attention_mask"]
        if self.max_length is not None:
            longest = int(prompt_mask.sum(dim=1).max())
            if longest >= self.max_length:
                raise ValueError(f"a prompt with its video tokens is {longest} tokens, >= max_length "
                                 f"{self.max_length}; raise max_length or drop the pair (validate_pairs does)")
        input_ids = torch.cat([prompts["input_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        completion_mask = torch.cat([torch.zeros_like(prompt_mask), completion_mask], dim=1)
        # flush_left shifts every tensor by its first one, the attention mask.
        columns = dict(attention_mask=attention_mask, input_ids=input_ids, completion_mask=completion_mask)
        if "mm_token_type_ids" in prompts:  # Qwen: which tokens are image / video ones, for its rope positions
            columns["mm_token_type_ids"] = torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(completion_ids)],
                                                     dim=1)
        columns = dict(zip(columns, flush_left(*columns.values()), strict=True))
        if self.max_length is not None:  # every prompt is shorter: this cuts completion tokens only
            columns = {name: t[:, :self.max_length] for name, t in columns.items()}
        batch = dict(prompts)
        batch.update(columns)
        return batch
