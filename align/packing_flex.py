"""The packed pair mask (align/packing.py) as a FlexAttention BlockMask, for models run with flex_attention.

The dense 4D mask costs O(width²) per row and makes SDPA fall back to its masked (slowest) kernel. FlexAttention
takes the same rule as a function of (row, query, key) and a block map built from it, so fully masked blocks
(a rejected token never reads chosen ones, padding reads nothing) are skipped. The rule, per row with prefix
length n, x = n + len(chosen) (the copy of the last prefix token) and end = x + 1 + len(rejected):

    causal (key <= query), and keys in [n - 1, x) are hidden from queries >= x (x and rejected see the prefix
    minus its last token, never chosen); PaliGemma's prompt sees all of itself; padding queries see themselves.

With several pairs per row (`row_tokens`) the same rule holds inside each pair's block, in row coordinates, and
no token reads another pair's: the block map then skips every off-diagonal block, so attention costs what the
pairs cost apart.

This is the rule `PackedPairCollator._pack` writes densely; tests/test_fast_dpo_flex.py checks that both give
the same logits. Gemma 3's per-image blocks and sliding window are not expressed here, transformers has no
flex_attention for Qwen2-VL / Qwen2.5-VL, and Idefics3 / SmolVLM are unchecked (`flex_unsupported`): those keep
sdpa/eager, and under flash_attention_2 fall back to trl.

FlexAttention on CPU (torch 2.13): the forward runs, the backward raises "FlexAttention does not support
backward on CPU", so training on this path needs a GPU (tests/gpu/device_check.py exercises it there).
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

FLEX = "flex_attention"
# Families whose flex logits are checked against the dense mask (tests/test_fast_dpo_flex.py). Idefics3 and
# SmolVLM are left out: on CPU, torch 2.13's inductor fails to compile their flex kernel (C++ error
# "'cur_kvSplitSize0' was not declared"), so nothing checks them; Qwen2-VL/2.5-VL have no flex in transformers.
FLEX_MODEL_TYPES = {"llava", "llava_next", "llava_next_video", "paligemma"}


def flex_unsupported(model, layout) -> str | None:
    """None when `model` (of FamilyLayout `layout`) can run packed rows on flex_attention, else why not."""
    if not getattr(model, "_supports_flex_attn", False):  # transformers 5.24: Qwen2-VL / Qwen2.5-VL
        return f"transformers has no flex_attention for {type(model).__name__} (use sdpa or eager)"
    if layout.image_block_token_id is not None or layout.sliding_window is not None:
        return "per-image blocks / sliding-window layers (Gemma 3) have no flex mask here; use sdpa or eager"
    if model.config.model_type not in FLEX_MODEL_TYPES:
        return f"the flex pair mask is not checked on {model.config.model_type!r} yet (use sdpa or eager)"
    return None


def run_flash_on_flex(model) -> bool:
    """A model loaded with flash_attention_2 cannot take the packed mask (flash only knows causal/varlen);
    switch its language model to FlexAttention, which can, and say so. True when it switched."""
    if model.config.get_text_config()._attn_implementation != "flash_attention_2":
        return False
    # Only the decoder reads the packed mask; the vision tower keeps flash attention.
    model.set_attn_implementation({"text_config": FLEX} if "text_config" in model.config.sub_configs else FLEX)
    logger.warning("fast DPO: the model was loaded with flash_attention_2, which cannot take the packed pair mask; "
                   "its language model runs on flex_attention instead")
    return True


def pair_block_mask(pair_index: torch.Tensor, bounds: torch.Tensor):
    """BlockMask over (rows, width, width) from the collator's `pair_index` (rows, width; -1 = padding) and
    `pair_bounds` (rows, 3, width): per token, its pair's n, x and p (absolute in the row; p = the end of a
    prompt that sees all of itself, PaliGemma, else the pair's start). Keys of another pair are never read."""
    from torch.nn.attention.flex_attention import create_block_mask

    # Separate contiguous tensors, not views of `bounds`: torch 2.13's CPU inductor fails to lower a mask_mod
    # that reads views ("All the buffers in the score and mask subgraph should be in ...input_buffers").
    n, x, p = (bounds[:, i].contiguous() for i in range(3))
    pair = pair_index.contiguous()

    def allowed(b, h, q, kv):
        same = pair[b, q] == pair[b, kv]
        seen = (kv <= q) | ((q < p[b, q]) & (kv < p[b, q]))
        hidden = (q >= x[b, q]) & (kv >= n[b, q] - 1) & (kv < x[b, q])  # x and rejected never read chosen
        padding = pair[b, q] < 0
        return (~padding & same & seen & ~hidden) | (padding & (kv == q))

    rows, width = pair_index.shape
    return create_block_mask(allowed, B=rows, H=None, Q_LEN=width, KV_LEN=width, device=pair_index.device)
