"""The batch collator for vision preference pairs: trl's own, with one family-specific adaptation.

trl's `DataCollatorForVisionPreference` runs the processor three times per batch: once on prompts with their
images, then on the chosen and on the rejected completions *without* images. That fails for PaliGemma
(and PaliGemma 2, which share `PaliGemmaProcessor`) in two ways:

1. `PaliGemmaProcessor.validate_inputs` refuses every call without images:
   ValueError: `images` are expected as arguments to a `PaliGemmaProcessor` instance.
2. PaliGemma is a prefix-LM: `token_type_ids == 0` marks the prefix, which attends bidirectionally, and
   `== 1` the suffix, which is causal. Completions tokenized as plain text would get type 0, so each
   completion token would see the tokens after it and the DPO log-probs would be meaningless.
   (Its processor also returns prompt-only `labels` for backward compatibility, which would clash with
   the labels the trainer builds.)

So for PaliGemma the collator sees the processor through `PrefixLMProcessorView`: calls with images go to
the real processor (minus `labels`); image-free calls (the completions) go to the tokenizer and are marked
as suffix (`token_type_ids = 1` on real tokens), exactly as the processor's own `suffix=` argument does.
Every other family uses trl's collator unchanged, except for pairs with videos (a `videos` column), which
trl's collator cannot pass to the processor: those get `VideoPreferenceCollator` (align/packing_video.py),
trl's batch layout with the videos.
"""

from __future__ import annotations

from typing import Any


def needs_prefix_lm_view(processor) -> bool:
    """True for processors that cannot tokenize text alone and mark completions by token type (PaliGemma)."""
    try:
        from transformers import PaliGemmaProcessor
    except ImportError:  # a transformers without PaliGemma cannot have loaded one
        return False
    return isinstance(processor, PaliGemmaProcessor)


class PrefixLMProcessorView:
    """The processor as trl's collator should see it for a prefix-LM family (see the module docstring).

    Everything except `__call__` is the wrapped processor's own (chat template, tokenizer, image token).
    """

    def __init__(self, processor):
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def __call__(self, images=None, text=None, **kwargs):
        if images is not None:
            out = self._processor(images=images, text=text, **kwargs)
            out.pop("labels", None)  # prompt-only BC labels; the trainer builds its own from completion_mask
            return out
        tokenizer = self._processor.tokenizer
        out = tokenizer(text, padding=kwargs.get("padding", True), padding_side=kwargs.get("padding_side", "right"),
                        return_tensors=kwargs.get("return_tensors", "pt"),
                        add_special_tokens=kwargs.get("add_special_tokens", False))
        # Suffix tokens are causal (type 1); padding keeps type 0 and is masked out by attention_mask anyway.
        out["token_type_ids"] = out["attention_mask"].clone()
        return out


def make_data_collator(processor, args, videos: bool = False):
    """The collator for DPOTrainer(data_collator=...); None means trl's default is right for this family.
    `videos`: the pairs have a `videos` column (Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT-Video)."""
    if videos:
        from halign.align.packing_video import VideoPreferenceCollator

        return VideoPreferenceCollator(processor, max_length=args.max_length)
    if not needs_prefix_lm_view(processor):
        return None
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    return DataCollatorForVisionPreference(processor=PrefixLMProcessorView(processor), max_length=args.max_length,
                                           pad_to_multiple_of=args.pad_to_multiple_of)
