"""Family-specific parts of a packed row (align/packing.py): PaliGemma's prefix-LM, Gemma 3's image blocks.

PaliGemma and PaliGemma 2 are prefix-LMs: in trl's rows the prompt (image tokens + text, token_type_ids == 0)
attends bidirectionally within itself and the completion (type 1) is causal; position ids start at 1. Their
forward returns a custom 4D attention mask as is (transformers' `create_causal_mask` exits early on a 4D mask,
and ignores token_type_ids then), so a packed row gives them, instead of token types:

- a prefix block in which every prompt token sees every other one, and none of chosen, x or rejected;
- chosen causal over the prefix, x seeing the prefix minus its last token plus itself (exactly what the last
  prompt token sees, so it gets that token's hidden state) and rejected causal over those plus x;
- position ids shifted by one (`position_offset`).

PaliGemma 2 (a Gemma 2 decoder) also has sliding-window layers. Its forward builds their mask from the same 4D
mask, so the window is not applied: the collator refuses a pair whose prompt + longer completion exceeds the
window, where trl's mask would differ (released checkpoints: a 4096-token window, above rows at 224 and 448 px,
i.e. 256 and 1024 image tokens; at 896 px the 4096 image tokens alone reach it, so use trl's path there).

Gemma 3: each image's tokens (a run of image tokens, token_type_ids == 1 in trl's rows) attend to each other
bidirectionally, text is causal, and its sliding-window layers keep only keys less than `sliding_window`
positions back (AND(window, OR(causal, image block)) in transformers' `create_masks_for_vision_model`). Its
forward takes a prepared {"full_attention": ..., "sliding_attention": ...} mapping as attention_mask, so the
collator builds both: the packed mask with the image blocks, and that mask restricted by position distance
(positions in a packed row are those of the unpacked rows, so the distances, hence the windows, are trl's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Families packed with a bidirectional prompt block (token_type_ids == 0 in trl's rows) and 1-indexed positions.
PREFIX_LM_MODEL_TYPES = {"paligemma"}
# Families with bidirectional attention inside each image and a {full, sliding} attention mask mapping.
IMAGE_BLOCK_MODEL_TYPES = {"gemma3"}


@dataclass(frozen=True)
class FamilyLayout:
    """How a family's packed row differs from the causal default (see the module docstring)."""

    position_offset: int = 0  # position id of a prompt's first token
    bidirectional_prefix: bool = False  # prompt tokens see the whole prompt (a prefix-LM)
    # Gemma 3: each run of these image tokens in the prompt sees all of itself. The model config's id: Gemma 3's
    # processor.image_token_id is the <start_of_image> placeholder, not the soft tokens that replace it.
    image_block_token_id: int | None = None
    sliding_window: int | None = None
    # True: the forward takes {"full_attention", "sliding_attention"} masks and the window is applied in the
    # latter; False: it reuses one mask for both, so rows whose unpacked length exceeds the window are refused.
    mask_mapping: bool = False


def family_layout(model) -> FamilyLayout:
    """The packed-row layout of `model`'s family (the causal default for every family not listed here)."""
    config = model.config
    if config.model_type in PREFIX_LM_MODEL_TYPES:
        return FamilyLayout(position_offset=1, bidirectional_prefix=True,
                            sliding_window=getattr(config.get_text_config(), "sliding_window", None))
    if config.model_type in IMAGE_BLOCK_MODEL_TYPES:
        return FamilyLayout(image_block_token_id=config.image_token_id, mask_mapping=True,
                            sliding_window=getattr(config.get_text_config(), "sliding_window", None))
    return FamilyLayout()


def image_blocks(prefix: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """(n, n) bool: True where query and key are image tokens of the same run (one image) in `prefix`, the
    groups of transformers' gemma3 `get_block_sequence_ids_for_mask`."""
    is_image = prefix == image_token_id
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:-1]
    group = torch.where(is_image, starts.cumsum(0), 0)
    return is_image[:, None] & (group[:, None] == group[None, :])


def layer_masks(allowed: torch.Tensor, positions: torch.Tensor, layout: FamilyLayout):
    """`allowed` (b, w, w), or with `layout.mask_mapping` the {full, sliding} pair, the latter keeping keys
    less than `sliding_window` positions before the query (`positions`: (b, w) position ids)."""
    if not layout.mask_mapping:
        return allowed
    if layout.sliding_window is None:  # no local layers configured: both kinds see the same keys
        return {"full_attention": allowed, "sliding_attention": allowed}
    near = positions[:, :, None] - positions[:, None, :] < layout.sliding_window
    return {"full_attention": allowed, "sliding_attention": allowed & near}


def completion_processor(processor):
    """`processor` as the packed collator should call it: PaliGemma's refuses text-only calls (the completions),
    so it is seen through the prefix-LM view of align/collator.py (tokenizer for text, no BC `labels`)."""
    from halign.align.collator import PrefixLMProcessorView, needs_prefix_lm_view

    return PrefixLMProcessorView(processor) if needs_prefix_lm_view(processor) else processor
