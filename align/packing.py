"""Pair packing for the fast vision DPO path (`align/fast_dpo.py`): one row per preference pair.

trl's vision collator builds 2B rows (prompt+chosen, prompt+rejected), so the vision tower and every decoder
layer run twice over the prompt and its image tokens, which are most of the sequence. Here each pair is one row

    prefix | chosen | x | rejected          x = a copy of the prefix's last token, at the same position

with a 4D additive attention mask: prefix and chosen are causal as usual; x and rejected see the prefix minus
its last token, x itself and the earlier rejected tokens, never the chosen ones. x sees exactly what the last
prefix token sees (same token, same position, same keys), so its hidden state is that token's, and the row's
next-token log-probs are, token for token, the ones trl computes on its two rows: chosen[0] is read at the
last prefix position and rejected[0] at x. Position ids of x and rejected restart at the prefix's end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

CHOSEN, REJECTED = 1, 2  # segment ids in `segments`; 0 = prefix, x or padding
# Families whose forward takes a custom 4D mask + 1D position ids unchanged (a causal HF decoder; image
# features merged into the token embeddings). Each is checked against trl in tests/test_fast_dpo_families.py.
# Not here: Qwen2-VL/2.5-VL (3D rope positions computed from the unpacked sequence), Gemma 3 (bidirectional
# attention inside images), PaliGemma (a prefix-LM): they take trl's path.
SUPPORTED_MODEL_TYPES = {"llava", "llava_next", "idefics3", "smolvlm"}
SUPPORTED_ATTENTION = {"eager", "sdpa"}


def packing_unsupported(model) -> str | None:
    """None when `model` can run packed pairs, else why not (the caller falls back to trl's own path)."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}"
    attention = config.get_text_config()._attn_implementation
    if attention not in SUPPORTED_ATTENTION:
        return f"attention implementation {attention!r} ignores custom 4D masks (use eager or sdpa)"
    return None


def _record_name(example: dict, index: int) -> str:
    for key in ("prompt_id", "id"):
        if example.get(key) is not None:
            return f"record {example[key]!r} (batch item {index})"
    return f"batch item {index}"


@dataclass
class PackedPairCollator:
    """Collates conversational vision pairs into packed rows (see the module docstring).

    Outputs `input_ids`, `attention_mask` (4D, additive), `position_ids`, `labels` (-100 outside the completions),
    `segments` (CHOSEN / REJECTED on completion tokens), the processor's image tensors, and `ref_chosen_logps` /
    `ref_rejected_logps` when the examples carry them.
    """

    processor: Any
    max_length: int | None = None
    mask_dtype: torch.dtype = torch.float32
    # mDPO (align/mdpo.py): also collate each pair's chosen answer with a corrupted copy of its image, under
    # batch["corrupted"] (the same packed layout with no rejected part).
    mdpo: Any = None

    def _texts(self, examples):
        from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

        texts = []
        for example in examples:
            row = {"prompt": example["prompt"], "chosen": example["chosen"], "rejected": example["rejected"]}
            if is_conversational(row):
                row = {"prompt": prepare_multimodal_messages(row["prompt"], images=example["images"]),
                       "chosen": prepare_multimodal_messages(row["chosen"]),
                       "rejected": prepare_multimodal_messages(row["rejected"])}
                row = apply_chat_template(row, self.processor)
            texts.append(row)
        return texts

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        examples = [dict(e, images=[e["image"]]) if "image" in e else e for e in examples]
        texts = self._texts(examples)
        images = [e["images"] for e in examples]
        prompts = self.processor(images=images if any(images) else None, text=[t["prompt"] for t in texts],
                                 padding=True, padding_side="left", return_tensors="pt", add_special_tokens=False)
        sides = {name: self.processor(text=[t[name] for t in texts], padding=True, padding_side="right",
                                      return_tensors="pt", add_special_tokens=False)
                 for name in ("chosen", "rejected")}
        image_token = getattr(self.processor, "image_token_id", None)
        rows = []
        for i, example in enumerate(examples):
            prefix = prompts["input_ids"][i][prompts["attention_mask"][i].bool()]
            n = len(prefix)
            if self.max_length is not None and n >= self.max_length:
                raise ValueError(f"{_record_name(example, i)}: the prompt with its image tokens is {n} tokens, "
                                 f">= max_length {self.max_length}; images are never truncated, so raise max_length "
                                 "or drop the pair (validate_pairs does)")
            if image_token is not None and int(prefix[-1]) == image_token:
                raise ValueError(f"{_record_name(example, i)}: the prompt ends on an image token; packing needs a "
                                 "text token there (use fast: false for this template)")
            # Only completion text is cut: image tokens must match the image features one for one, and trl's
            # keep_start would cut them too once prompt + images pass max_length.
            keep = None if self.max_length is None else self.max_length - n
            chosen = sides["chosen"]["input_ids"][i][sides["chosen"]["attention_mask"][i].bool()][:keep]
            rejected = sides["rejected"]["input_ids"][i][sides["rejected"]["attention_mask"][i].bool()][:keep]
            rows.append((prefix, chosen, rejected))
        batch = self._with_images(self._pack(rows), prompts)
        if self.mdpo is not None:
            batch["corrupted"] = self._corrupted_rows(examples, texts, rows)
        # Which records this batch holds: a non-finite loss is reported with them.
        batch["record_names"] = [_record_name(e, i) for i, e in enumerate(examples)]
        for key in ("ref_chosen_logps", "ref_rejected_logps", "ref_corrupted_chosen_logps"):
            if key in examples[0]:
                batch[key] = torch.tensor([e[key] for e in examples], dtype=torch.float32)
        return batch

    @staticmethod
    def _with_images(batch: dict, processed) -> dict:
        for key, value in processed.items():
            if key not in ("input_ids", "attention_mask"):
                batch[key] = value  # pixel_values etc.: one image set per row
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
        return self._with_images(self._pack(corrupted), prompts)

    def _pack(self, rows) -> dict[str, torch.Tensor]:
        pad_id = self.processor.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.processor.tokenizer.eos_token_id
        width = max(len(p) + len(c) + 1 + len(r) for p, c, r in rows)
        b = len(rows)
        input_ids = torch.full((b, width), pad_id, dtype=torch.long)
        position_ids = torch.zeros((b, width), dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        segments = torch.zeros((b, width), dtype=torch.long)
        allowed = torch.zeros((b, width, width), dtype=torch.bool)
        causal = torch.ones((width, width), dtype=torch.bool).tril()
        for i, (prefix, chosen, rejected) in enumerate(rows):
            n, c, r = len(prefix), len(chosen), len(rejected)
            # x re-reads the last prefix token so rejected[0] gets its own prediction slot: the vision tower and
            # the shared prompt then run once per pair instead of twice.
            x = n + c
            end = x + 1 + r
            input_ids[i, :end] = torch.cat([prefix, chosen, prefix[-1:], rejected])
            position_ids[i, :end] = torch.cat([torch.arange(n + c), torch.arange(n - 1, n + r)])
            labels[i, n:x], labels[i, x + 1:end] = chosen, rejected
            segments[i, n:x], segments[i, x + 1:end] = CHOSEN, REJECTED
            allowed[i, :end, :end] = causal[:end, :end]
            allowed[i, x:end, n - 1:x] = False  # x and rejected: not the last prefix token, not chosen
            idx = torch.arange(end, width)
            allowed[i, idx, idx] = True  # padding rows see themselves only: finite softmax, never read
        if self.mask_dtype == torch.bool:  # sdpa takes a boolean mask (True = attend)
            mask = allowed[:, None]
        else:  # eager adds the mask to the scores
            mask = torch.zeros((b, 1, width, width), dtype=self.mask_dtype)
            mask.masked_fill_(~allowed[:, None], torch.finfo(self.mask_dtype).min)
        return {"input_ids": input_ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels,
                "segments": segments}


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def hash_reference(path: str | Path | None, module: torch.nn.Module | None = None) -> str:
    """Hash of a reference checkpoint: its weight files (and config/tokenizer files), else the module's tensors."""
    digest = hashlib.sha256()
    folder = Path(path) if path else None
    if folder is not None and folder.is_dir() and any(f.suffix in WEIGHT_SUFFIXES for f in folder.iterdir()):
        for file in sorted(f for f in folder.rglob("*") if f.is_file()):
            digest.update(str(file.relative_to(folder)).encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(chunk)
        return "files:" + digest.hexdigest()
    if module is None:
        raise ValueError(f"cannot hash the reference: {path!r} is not a local checkpoint folder and no module given")
    for name, tensor in sorted(module.state_dict().items()):
        if "lora_" in name:
            continue  # adapters are off in the reference
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return "tensors:" + digest.hexdigest()
