"""align/freeze.py on every tiny family: each part is found, frozen alone, and nothing else is touched."""

from __future__ import annotations

import pytest
import torch

import tiny_models  # tests/ is on sys.path (pytest's default "prepend" import mode)
from halign.align.freeze import freeze, part_of


@pytest.fixture(scope="module", params=tiny_models.FAMILIES)
def model(request):
    # Only the model is needed: the processors are not built.
    return tiny_models.build_family(request.param, with_processor=False)[0]


def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("part", ["vision_tower", "projector", "language_model"])
def test_freezes_exactly_one_part(model, part):
    for p in model.parameters():
        p.requires_grad_(True)
    before = _trainable(model)
    counts = freeze(model, **{part: True})
    after = _trainable(model)
    gone = before - after
    assert gone and counts[part] == sum(dict(model.named_parameters())[n].numel() for n in gone)
    assert all(part_of(n) == part for n in gone)
    # The other two parts stay trainable.
    others = {n for n in after if part_of(n) not in (None, part)}
    assert {part_of(n) for n in others} == {"vision_tower", "projector", "language_model"} - {part}


def test_frozen_parts_get_no_gradient(model):
    for p in model.parameters():
        p.requires_grad_(True)
    freeze(model, vision_tower=True, language_model=True)
    trainable = _trainable(model)
    assert trainable and all(part_of(n) in ("projector", None) for n in trainable)


def test_names_by_family():
    assert part_of("model.visual.merger.mlp.0.weight") == "projector"  # Qwen: merger inside visual
    assert part_of("model.visual.blocks.0.attn.qkv.weight") == "vision_tower"
    assert part_of("model.connector.modality_projection.proj.weight") == "projector"
    assert part_of("model.text_model.layers.0.mlp.up_proj.weight") == "language_model"
    assert part_of("lm_head.weight") == "language_model"
    assert part_of("model.image_newline") is None


def test_missing_part_is_an_error():
    with pytest.raises(ValueError, match="vision_tower of Linear"):
        freeze(torch.nn.Linear(2, 2), vision_tower=True)
