"""Pair packing for the fast vision DPO path (`align/fast_dpo.py`): one row per preference pair.

trl's vision collator builds 2B rows (prompt+chosen, prompt+rejected), so the vision tower and every decoder
layer run twice over the prompt and its image tokens, which are most of the sequence. Here each pair is one row

    prefix | chosen | x | rejected          x = a copy of the prefix's last token, at the same position

with a 4D additive attention mask: prefix and chosen are causal as usual; x and rejected see the prefix minus
its last token, x itself and the earlier rejected tokens, never the chosen ones. x sees exactly what the last
prefix token sees (same token, same position, same keys), so its hidden state is that token's, and the row's
next-token log-probs are, token for token, the ones trl computes on its two rows: chosen[0] is read at the
last prefix position and rejected[0] at x. Position ids of x and rejected restart at the prefix's end.

Qwen2-VL and Qwen2.5-VL use 3D rope positions (temporal, height, width): an image's tokens take grid positions
and the text after it continues from the image's start + max(grid height, width). The model computes them
from the unpacked sequence, so here the collator passes them explicitly (`mrope_prefix_positions`), laid out
the same way: chosen, x and rejected continue from the prefix's last (text) position. Video clips (a
`videos` column: align/packing_video.py) are laid out like images, once per pair, with their temporal
positions spaced by the clip's time interval; LLaVA-NeXT-Video's (1D positions) exactly like its images.

With `row_tokens`, consecutive pairs share a row (padding-free): each pair's block is laid out as above with
its own positions, and the mask is block-diagonal, so no pair reads another and no padding is computed between
them. Log-probs are summed per pair through `pair_index`.

PaliGemma and PaliGemma 2 (prefix-LMs) get a bidirectional prefix block and 1-indexed positions, Gemma 3
bidirectional blocks over each image and a second, sliding-window mask for its local layers: see
align/packing_families.py, whose `FamilyLayout` the collator takes from the model (`family_layout`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch

from halign.align.packing_families import FamilyLayout, completion_processor, image_blocks, layer_masks
from halign.align.packing_video import (check_video_collation, has_videos, time_intervals, video_messages,
                                        video_prompt_inputs)

CHOSEN, REJECTED = 1, 2  # segment ids in `segments`; 0 = prefix, x or padding
# Families whose forward takes a custom mask + position ids unchanged (image features merged into the token
# embeddings): causal decoders; Qwen2-VL/2.5-VL, which also take explicit 3D rope positions that the collator
# computes (MROPE_MODEL_TYPES); PaliGemma/PaliGemma 2 (prefix-LMs) and Gemma 3 (bidirectional attention inside
# each image, sliding-window layers), whose masks and positions the collator builds (packing_families.py).
# Each is checked against trl in tests/test_fast_dpo_families.py; any other family takes trl's path.
SUPPORTED_MODEL_TYPES = {"llava", "llava_next", "llava_next_video", "idefics3", "smolvlm", "qwen2_vl", "qwen2_5_vl",
                         "paligemma", "gemma3"}
SUPPORTED_ATTENTION = {"eager", "sdpa", "flex_attention"}  # flash_attention_2 is switched to flex (packing_flex)
# Families whose decoder uses Qwen2-VL's multimodal rope (get_rope_index in transformers' modeling_qwen2_vl.py).
MROPE_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl"}


def packing_unsupported(model) -> str | None:
    """None when `model` can run packed pairs, else why not (the caller falls back to trl's own path)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}"
    attention = config.get_text_config()._attn_implementation
    if attention not in SUPPORTED_ATTENTION | {"flash_attention_2"}:
        return f"attention implementation {attention!r} ignores custom 4D masks (use eager, sdpa or flex_attention)"
    if attention in ("flex_attention", "flash_attention_2"):
        from halign.align.packing_families import family_layout
        from halign.align.packing_flex import flex_unsupported

        return flex_unsupported(model, family_layout(model))
    return None


def mrope_merge_size(model) -> int | None:
    """The vision config's spatial_merge_size for a Qwen2-VL-style 3D-rope model, else None (1D positions)."""
    config = model.config
    return config.vision_config.spatial_merge_size if config.model_type in MROPE_MODEL_TYPES else None


def mrope_prefix_positions(prefix: torch.Tensor, image_token_id: int, grids, merge_size: int,
                           video_token_id: int | None = None, video_grids=(), intervals=()) -> torch.Tensor:
    """(3, len(prefix)) rope positions of an unpadded prompt, as Qwen2-VL/2.5-VL's get_rope_index gives them.

    A run of image tokens takes the next image grid (t, h, w) from the iterator `grids` (the processor's
    image_grid_thw, in order), positions start + (t, h, w) over the merged grid, and the text after it
    continues at start + max(h, w) // merge_size. A run of video tokens does the same with the next of
    `video_grids`, its temporal positions spaced by the next of `intervals` (`packing_video.time_intervals`)
    and truncated to integers, as the model does. Text tokens have the same position in all three rows.
    Checked against the model's own function in tests/test_fast_dpo.py and tests/test_fast_dpo_video.py.
    """
    kinds = (prefix == image_token_id).long()  # 0 text, 1 image, 2 video: get_rope_index's mm_token_type_ids
    if video_token_id is not None:
        kinds[prefix == video_token_id] = 2
    pieces, start = [], 0
    for kind, run in itertools.groupby(kinds.tolist()):
        length = len(list(run))
        if kind == 0:
            pieces.append(torch.arange(start, start + length).expand(3, -1))
            start += length
            continue
        t, h, w = (int(v) for v in next(grids if kind == 1 else video_grids))
        h, w = h // merge_size, w // merge_size
        interval = next(intervals) if kind == 2 else 1
        grid = torch.stack(torch.meshgrid((torch.arange(t) * interval).long(), torch.arange(h), torch.arange(w),
                                          indexing="ij"))
        if t * h * w != length:  # e.g. two images with no text between them: the model cannot place them either
            name = "image" if kind == 1 else "video"
            raise ValueError(f"a run of {length} {name} tokens does not match its {name} grid {(t, h, w)}")
        pieces.append(grid.reshape(3, -1) + start)
        start += max(h, w)
    return torch.cat(pieces, dim=1)


def group_pairs(lengths: list[int], row_tokens: int | None) -> list[list[int]]:
    """Pair indices per row, in order: consecutive pairs share a row while their packed lengths fit in
    `row_tokens` (a longer pair gets a row of its own); None = one pair per row."""
    if row_tokens is None:
        return [[i] for i in range(len(lengths))]
    groups, used = [], 0
    for i, length in enumerate(lengths):
        if groups and used + length <= row_tokens:
            groups[-1].append(i)
            used += length
        else:
            groups.append([i])
            used = length
    return groups


def _record_name(example: dict, index: int) -> str:
    for key in ("prompt_id", "id"):
        if example.get(key) is not None:
            return f"record {example[key]!r} (batch item {index})"
    return f"batch item {index}"


@dataclass
class PackedPairCollator:
    """Collates conversational vision pairs into packed rows (see the module docstring).

    Outputs `input_ids`, `attention_mask` (4D, additive), `position_ids`, `labels` (-100 outside the completions),
    `segments` (CHOSEN / REJECTED on completion tokens), `pair_index` (the pair each token belongs to, -1 on
    padding; with `row_tokens` a row holds several pairs), `pair_bounds` (per token, its pair's prefix end, x and
    bidirectional-prompt end, for the flex mask), the processor's image tensors (one image set per pair, in pair
    order, which is the order of their tokens in the rows), and `ref_chosen_logps` / `ref_rejected_logps` (one
    per pair) when the examples carry them.
    """

    processor: Any
    max_length: int | None = None
    mask_dtype: torch.dtype = torch.float32
    # mDPO (align/mdpo.py): also collate each pair's chosen answer with a corrupted copy of its image, under
    # batch["corrupted"] (the same packed layout with no rejected part).
    mdpo: Any = None
    # Qwen2-VL/2.5-VL (`mrope_merge_size(model)`): build 3D rope position ids, shape (3, batch, width).
    mrope_merge_size: int | None = None
    # Qwen2.5-VL (`packing_video.tokens_per_second(model)`): the temporal rope scale of video tokens.
    mrope_tokens_per_second: float | None = None
    # `family_layout(model)`: PaliGemma's bidirectional prompt block and 1-indexed positions, Gemma 3's image
    # blocks and sliding-window mask; the causal default for every other family.
    layout: FamilyLayout = FamilyLayout()
    # flex_attention models: no dense mask; the trainer builds a BlockMask from `pair_index` and `pair_bounds`
    # (align/packing_flex.py).
    flex: bool = False
    # Several pairs per row (padding-free): whole pairs are packed, in order, into rows of at most this many
    # tokens, each pair with its own positions and a block-diagonal mask; None = one pair per row.
    row_tokens: int | None = None

    def __post_init__(self):
        self.processor = completion_processor(self.processor)  # PaliGemma: completions through its tokenizer

    def _texts(self, examples):
        from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

        texts = []
        for example in examples:
            row = {"prompt": example["prompt"], "chosen": example["chosen"], "rejected": example["rejected"]}
            if is_conversational(row):
                row = {"prompt": video_messages(row["prompt"], example["images"], example.get("videos")),
                       "chosen": prepare_multimodal_messages(row["chosen"]),
                       "rejected": prepare_multimodal_messages(row["rejected"])}
                row = apply_chat_template(row, self.processor)
            texts.append(row)
        return texts

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        examples = [dict(e, images=[e["image"]]) if "image" in e else e for e in examples]
        texts = self._texts(examples)
        if has_videos(examples):
            check_video_collation(self.processor, self.mrope_merge_size, self.mdpo)
            prompts = video_prompt_inputs(self.processor, [t["prompt"] for t in texts], examples)
        else:
            images = [e["images"] for e in examples]
            prompts = self.processor(images=images if any(images) else None, text=[t["prompt"] for t in texts],
                                     padding=True, padding_side="left", return_tensors="pt",
                                     add_special_tokens=False)
        sides = {name: self.processor(text=[t[name] for t in texts], padding=True, padding_side="right",
                                      return_tensors="pt", add_special_tokens=False)
                 for name in ("chosen", "rejected")}
        vision_tokens = {getattr(self.processor, name, None) for name in ("image_token_id", "video_token_id")} - {None}
        rows = []
        for i, example in enumerate(examples):
            prefix = prompts["input_ids"][i][prompts["attention_mask"][i].bool()]
            n = len(prefix)
            if self.max_length is not None and n >= self.max_length:
                raise ValueError(f"{_record_name(example, i)}: the prompt with its image tokens is {n} tokens, "
                                 f">= max_length {self.max_length}; images are never truncated, so raise max_length "
                                 "or drop the pair (validate_pairs does)")
            if int(prefix[-1]) in vision_tokens:
                raise ValueError(f"{_record_name(example, i)}: the prompt ends on an image or video token; packing "
                                 "needs a text token there (use fast: false for this template)")
            # Only completion text is cut: image tokens must match the image features one for one, and trl's
            # keep_start would cut them too once prompt + images pass max_length.
            keep = None if self.max_length is None else self.max_length - n
            chosen = sides["chosen"]["input_ids"][i][sides["chosen"]["attention_mask"][i].bool()][:keep]
            rejected = sides["rejected"]["input_ids"][i][sides["rejected"]["attention_mask"][i].bool()][:keep]
            window, longest = self.layout.sliding_window, n + max(len(chosen), len(rejected))
            if window is not None and not self.layout.mask_mapping and longest > window:
                raise ValueError(f"{_record_name(example, i)}: prompt + completion is {longest} tokens, more than the "
                                 f"sliding window ({window}) that packed rows cannot apply; set max_length <= {window} "
                                 "or use fast: false")
            rows.append((prefix, chosen, rejected))
        batch = self._with_images(self._pack(rows, self._prefix_positions(prompts)), prompts)
        if self.mdpo is not None:
            batch["corrupted"] = self._corrupted_rows(examples, texts, rows)
        # Which records this batch holds: a non-finite loss is reported with them.
        batch["record_names"] = [_record_name(e, i) for i, e in enumerate(examples)]
        for key in ("ref_chosen_logps", "ref_rejected_logps", "ref_corrupted_chosen_logps"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        return batch

    def _prefix_positions(self, prompts) -> list[torch.Tensor] | None:
        """Per row, the (3, n) rope positions of the unpadded prompt for 3D-rope families; None for 1D ones."""
        if self.mrope_merge_size is None:
            return None
        grids = iter(prompts.get("image_grid_thw", ()))  # one per image, rows in order (as get_rope_index reads it)
        video_grids = iter(prompts.get("video_grid_thw", ()))  # likewise one per video
        intervals = time_intervals(prompts, self.mrope_tokens_per_second)
        video_token = getattr(self.processor, "video_token_id", None)
        return [mrope_prefix_positions(ids[mask.bool()], self.processor.image_token_id, grids, self.mrope_merge_size,
                                       video_token, video_grids, intervals)
                for ids, mask in zip(prompts["input_ids"], prompts["attention_mask"], strict=True)]

    @staticmethod
    def _with_images(batch: dict, processed) -> dict:
        for key, value in processed.items():
            # (mm_)token_type_ids follow the padded prompt, not the packed row: Qwen only reads them to compute
            # rope positions, PaliGemma to build its prefix-LM mask; the packed batch carries both explicitly.
            if key not in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
                batch[key] = value  # pixel_values, image_grid_thw etc.: one image set per row
        return batch

    def _corrupted_rows(self, examples, texts, rows) -> dict[str, torch.Tensor]:
        """prompt (with the corrupted image) | chosen, per pair: the rows of mDPO's image-conditional term."""
        from halign.align.mdpo import corrupt_image, record_key

        images = [[corrupt_image(image, record_key(e), j, self.mdpo) for j, image in enumerate(e["images"])]
                  for e in examples]
        prompts = self.processor(images=images, text=[t["prompt"] for t in texts], padding=True,
                                 padding_side="left", return_tensors="pt", add_special_tokens=False)
        corrupted = []
        for i, (_, chosen, _) in enumerate(rows):
            # The crop is resized back to the image's size, so the prompt has the same tokens as with the real image.
            corrupted.append((prompts["input_ids"][i][prompts["attention_mask"][i].bool()], chosen, chosen[:0]))
        return self._with_images(self._pack(corrupted, self._prefix_positions(prompts)), prompts)

    def _pack(self, rows, prefix_positions=None) -> dict[str, torch.Tensor]:
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.processor.tokenizer.eos_token_id
        lengths = [len(p) + len(c) + 1 + len(r) for p, c, r in rows]
        groups = group_pairs(lengths, self.row_tokens)
        width = max(sum(lengths[i] for i in group) for group in groups)
        b = len(groups)
        input_ids = torch.full((b, width), pad_id, dtype=torch.long)
        rope_rows = 1 if prefix_positions is None else 3
        position_ids = torch.zeros((rope_rows, b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        segments = torch.zeros((b, width), dtype=torch.long)
        pair_index = torch.full((b, width), -1, dtype=torch.long)  # which pair each token belongs to; -1 = padding
        bounds = torch.zeros((b, 3, width), dtype=torch.long)  # per token, its pair's (n, x, p): pair_block_mask
        allowed = None if self.flex else torch.zeros((b, width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for row, group in enumerate(groups):
            start = 0
            for i in group:
                prefix, chosen, rejected = rows[i]
                n, c, r = len(prefix), len(chosen), len(rejected)
                # x re-reads the last prefix token so rejected[0] gets its own prediction slot: the vision tower
                # and the shared prompt then run once per pair instead of twice.
                x = n + c
                end = x + 1 + r
                block = slice(start, start + end)
                input_ids[row, block] = torch.cat([prefix, chosen, prefix[-1:], rejected])
                offset = self.layout.position_offset  # PaliGemma positions start at 1
                prefix_pos = torch.arange(offset, offset + n)[None] if prefix_positions is None else prefix_positions[i]
                # The prefix ends on a text token (checked in __call__), so what follows it continues from its
                # position + 1 in every rope row, as in the unpacked prefix+chosen and prefix+rejected sequences.
                # Each pair of a row restarts its own positions, as if it were alone.
                last = prefix_pos[:, -1:]
                position_ids[:, row, block] = torch.cat([prefix_pos, last + 1 + torch.arange(c), last,
                                                         last + 1 + torch.arange(r)], dim=1)
                labels[row, start + n:start + x], labels[row, start + x + 1:start + end] = chosen, rejected
                segments[row, start + n:start + x], segments[row, start + x + 1:start + end] = CHOSEN, REJECTED
                pair_index[row, block] = i
                p = n if self.layout.bidirectional_prefix else 0
                bounds[row, :, block] = torch.tensor([start + n, start + x, start + p])[:, None]
                if allowed is not None:
                    allowed[row, block, block] = self._pair_mask(prefix, x, end, causal)
                start += end
            if allowed is not None:
                idx = torch.arange(start, width)
                allowed[row, idx, idx] = True  # padding rows see themselves only: finite softmax, never read
        batch = {"input_ids": input_ids, "labels": labels, "segments": segments, "pair_index": pair_index,
                 "pair_bounds": bounds}
        if allowed is not None:
            masks = layer_masks(allowed, position_ids[0], self.layout)  # Gemma 3: {full, sliding} masks
            batch["attention_mask"] = ({k: self._as_mask(v) for k, v in masks.items()} if isinstance(masks, dict)
                                       else self._as_mask(masks))
        batch["position_ids"] = position_ids[0] if prefix_positions is None else position_ids  # (b, w) or (3, b, w)
        return batch

    def _pair_mask(self, prefix: torch.Tensor, x: int, end: int, causal: torch.Tensor) -> torch.Tensor:
        """(end, end) bool: what each token of one pair's block (prefix | chosen | x | rejected) may read."""
        n = len(prefix)
        allowed = causal[:end, :end].clone()
        if self.layout.bidirectional_prefix:  # prefix-LM: the prompt sees all of itself, still nothing after it
            allowed[:n, :n] = True
        if self.layout.image_block_token_id is not None:  # Gemma 3: each image's tokens see all of that image
            allowed[:n, :n] |= image_blocks(prefix, self.layout.image_block_token_id)
        allowed[x:end, n - 1:x] = False  # x and rejected: not the last prefix token, not chosen
        return allowed

    def _as_mask(self, allowed: torch.Tensor) -> torch.Tensor:
        """(b, 1, w, w) attention mask from the (b, w, w) allowed pairs."""
        if self.mask_dtype == torch.bool:  # sdpa takes a boolean mask (True = attend)
            return allowed[:, None]
        mask = torch.zeros((allowed.shape[0], 1, *allowed.shape[1:]), dtype=self.mask_dtype)
        return mask.masked_fill_(~allowed[:, None], torch.finfo(self.mask_dtype).min)  # eager adds it to the scores

