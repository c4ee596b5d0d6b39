"""mDPO's two extra terms (Wang et al., EMNLP 2024, "mDPO: Conditional Preference Optimization for MLLMs").

Plain DPO on image-grounded pairs can be won from the text alone: the model learns which *answers* are
preferred without looking harder at the image. mDPO adds, per pair (y_w = the chosen answer, m = the image,
m' = a corrupted copy of it, r(y|m) = log pi(y|m) - log pi_ref(y|m)):

    conditional:  -log sigmoid(beta * (r(y_w|m) - r(y_w|m')))   the same answer must be likelier with the real image
    anchor:       -log sigmoid(beta * r(y_w|m) - delta)           the chosen reward must stay above delta (0 in the paper)

added to the configured DPO loss. The paper's main setting corrupts the image by a random crop keeping
0-20% of its area; the crop is resized back to the original size so the processor yields the same number of
image tokens. The crop box is a pure function of (seed, record, image index), so the reference pass (run
once, `align/fast_dpo.py`) and every training epoch see the same corrupted image.

This module holds the settings, the corruption and the loss terms; `align/packing.py` builds the
corrupted-image rows and `align/fast_dpo.py` runs them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class MdpoConfig:
    crop_area: tuple[float, float] = (0.0, 0.2)  # fraction of the image area the corrupted crop keeps
    conditional_weight: float = 1.0  # weight of the image-conditional term
    anchor_weight: float = 1.0  # weight of the anchor term
    anchor_margin: float = 0.0  # delta: the chosen reward is pushed above it
    seed: int = 0  # seeds the crop boxes (with each record's identity)

    def __post_init__(self):
        low, high = self.crop_area
        if not 0.0 <= low <= high <= 1.0 or high == 0.0:
            raise ValueError(f"mdpo.crop_area must satisfy 0 <= low <= high <= 1 and high > 0, got {self.crop_area}")
        if self.conditional_weight < 0 or self.anchor_weight < 0:
            raise ValueError("mdpo.conditional_weight and mdpo.anchor_weight must be >= 0")

    @classmethod
    def from_setting(cls, setting) -> MdpoConfig | None:
        """`train.mdpo` as a recipe or TrainConfig gives it: false/None = off, true = defaults, a dict = fields."""
        if setting is None or setting is False:
            return None
        if setting is True:
            return cls()
        if isinstance(setting, MdpoConfig):
            return setting
        if not isinstance(setting, dict):
            raise ValueError(f"mdpo must be true, false or a mapping of MdpoConfig fields, got {setting!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(setting) - known)
        if unknown:
            raise ValueError(f"unknown mdpo key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
        values = dict(setting)
        if "crop_area" in values:
            values["crop_area"] = tuple(float(v) for v in values["crop_area"])
        return cls(**values)

    def key(self) -> dict:
        """What the corrupted-image reference log-probs depend on (for the reference cache key)."""
        return {"crop_area": list(self.crop_area), "seed": self.seed}


def crop_box(width: int, height: int, rng: random.Random, area: tuple[float, float]) -> tuple[int, int, int, int]:
    """A random box covering a fraction of the image area drawn from `area`, at least one pixel each way."""
    fraction = rng.uniform(*area)
    # Aspect ratio between 1:2 and 2:1, so the crop is a patch of the scene rather than a one-pixel strip.
    aspect = rng.uniform(0.5, 2.0)
    box_w = max(1, min(width, round((fraction * width * height * aspect) ** 0.5)))
    box_h = max(1, min(height, round((fraction * width * height / aspect) ** 0.5)))
    left = rng.randint(0, width - box_w)
    top = rng.randint(0, height - box_h)
    return left, top, left + box_w, top + box_h


def corrupt_image(image, record_key: str, index: int, cfg: MdpoConfig):
    """The corrupted copy m' of `image`: a random crop, resized back to the original size."""
    digest = hashlib.sha256(f"{cfg.seed}|{record_key}|{index}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    image = image.convert("RGB")
    box = crop_box(image.width, image.height, rng, cfg.crop_area)
    return image.crop(box).resize(image.size)


def record_key(example: dict) -> str:
    """A stable identity for a pair: its prompt_id when it has one, else a hash of its texts."""
    if example.get("prompt_id") is not None:
        return str(example["prompt_id"])
    text = repr((example.get("prompt"), example.get("chosen")))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def mdpo_losses(beta: float, chosen_logratios: torch.Tensor, corrupted_logratios: torch.Tensor, cfg: MdpoConfig):
    """(conditional, anchor) per-pair losses from the chosen answer's log-ratios with the real and corrupted image."""
    conditional = -F.logsigmoid(beta * (chosen_logratios - corrupted_logratios))
    anchor = -F.logsigmoid(beta * chosen_logratios - cfg.anchor_margin)
    return conditional, anchor
