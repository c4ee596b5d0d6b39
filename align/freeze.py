"""Freeze the vision tower, the projector and/or the language model of any supported VLM family.

The parts are found by the attribute names the families use in transformers 5, not by model class, so a new
family with the usual names needs no code here:

| family             | vision tower   | projector               | language model          |
| ------------------ | -------------- | ----------------------- | ----------------------- |
| LLaVA, LLaVA-NeXT  | vision_tower   | multi_modal_projector   | language_model, lm_head |
| Qwen2-VL, 2.5-VL   | visual         | visual.merger           | language_model, lm_head |
| Idefics3, SmolVLM  | vision_model   | connector               | text_model, lm_head     |
| Gemma3, PaliGemma  | vision_tower   | multi_modal_projector   | language_model, lm_head |

Qwen's projector (`merger`) lives inside its vision tower, so the projector names win over the vision names:
freezing the tower alone leaves the merger trainable, as in the other families.
"""

from __future__ import annotations

PARTS = {
    # Checked in this order for each parameter name; the first part with a matching path component wins.
    "projector": ("multi_modal_projector", "mm_projector", "connector", "merger"),
    "vision_tower": ("vision_tower", "visual", "vision_model"),
    "language_model": ("language_model", "text_model", "lm_head"),
}


def part_of(param_name: str) -> str | None:
    """Which part a parameter belongs to ('vision_tower', 'projector', 'language_model'), or None."""
    components = param_name.split(".")
    for part, names in PARTS.items():
        if any(name in components for name in names):
            return part
    return None


def freeze(model, vision_tower: bool = False, projector: bool = False, language_model: bool = False) -> dict[str, int]:
    """Set requires_grad=False on the chosen parts; returns the number of parameters frozen per part.

    A part that was asked for but cannot be found raises ValueError naming the model class, rather than
    silently training what the caller meant to freeze. Parameters outside the three parts (e.g. LLaVA-NeXT's
    `image_newline`) are left as they are.
    """
    wanted = {"vision_tower": vision_tower, "projector": projector, "language_model": language_model}
    frozen = {part: 0 for part, on in wanted.items() if on}
    found = set()
    for name, param in model.named_parameters():
        part = part_of(name)
        if part is None:
            continue
        found.add(part)
        if wanted[part]:
            param.requires_grad_(False)
            frozen[part] += param.numel()
    missing = [part for part in frozen if part not in found]
    if missing:
        raise ValueError(f"cannot find the {', '.join(missing)} of {type(model).__name__} "
                         f"(looked for attributes named {[n for p in missing for n in PARTS[p]]})")
    return frozen
