"""The packed pair mask as a FlexAttention BlockMask (align/packing_flex.py) equals the dense mask.

On CPU (torch 2.13) FlexAttention runs forward only ("FlexAttention does not support backward on CPU"), so
here: the mask rule cell by cell against the collator's dense mask, the same logits from tiny LLaVA, LLaVA-NeXT
and PaliGemma (prefix-LM) with sdpa + dense mask and with flex_attention + BlockMask, and the fast trainer's reference
log-probs (a no-grad pass) on both. Gradients on the flex path are checked on a GPU (tests/gpu/device_check.py).
"""

import datasets
import pytest
import torch

import tiny_models  # tests/ is on sys.path
from test_model_families import write_pairs

from halign.align.packing import PackedPairCollator, mrope_merge_size, packing_unsupported
from halign.align.packing_families import FamilyLayout, family_layout
from halign.align.packing_flex import FLEX_MODEL_TYPES, pair_block_mask

KEEP = ["images", "prompt", "chosen", "rejected", "prompt_id"]


def _examples(root, n=4):
    return [dict(r) for r in datasets.load_from_disk(str(write_pairs(root, n=n))).select_columns(KEEP)]


def _rule(block_mask, rows, width):
    """The BlockMask's mask_mod evaluated on every (row, query, key) cell."""
    b, q, kv = torch.arange(rows)[:, None, None], torch.arange(width)[None, :, None], torch.arange(width)[None, None]
    return block_mask.mask_mod(b, torch.zeros_like(b), q, kv).expand(rows, width, width)


@pytest.mark.parametrize("row_tokens", [None, 200], ids=["pair-per-row", "pairs-per-row"])
@pytest.mark.parametrize("prefix_lm", [False, True], ids=["causal", "prefix-lm"])
def test_block_mask_rule_equals_dense_mask(prefix_lm, row_tokens, tmp_path):
    _, processor = tiny_models.build_family("llava")
    collator = PackedPairCollator(processor, mask_dtype=torch.bool, layout=FamilyLayout(bidirectional_prefix=prefix_lm),
                                  row_tokens=row_tokens)
    batch = collator(_examples(tmp_path))
    rows, width = batch["input_ids"].shape
    assert (rows < 4) == (row_tokens is not None)  # several pairs share a row when a budget is given
    block_mask = pair_block_mask(batch["pair_index"], batch["pair_bounds"])
    assert torch.equal(_rule(block_mask, rows, width), batch["attention_mask"][:, 0])


# 120 tokens: two rows of several pairs each. A batch of one row is avoided on purpose: torch 2.13's CPU inductor
# fails to compile the flex kernel for it (C++ error "'cur_qSplitSize9' was not declared"), a CPU-only defect.
@pytest.mark.parametrize("row_tokens", [None, 120], ids=["pair-per-row", "pairs-per-row"])
@pytest.mark.parametrize("family", sorted(FLEX_MODEL_TYPES))
def test_flex_logits_equal_dense_mask(family, row_tokens, tmp_path):
    model, processor = tiny_models.build_family(family)
    model.eval()
    examples = _examples(tmp_path)
    kwargs = dict(mrope_merge_size=mrope_merge_size(model), layout=family_layout(model), row_tokens=row_tokens)
    dense = PackedPairCollator(processor, mask_dtype=torch.bool, **kwargs)(examples)
    flex = PackedPairCollator(processor, flex=True, **kwargs)(examples)
    assert "attention_mask" not in flex and torch.equal(dense["input_ids"], flex["input_ids"])
    assert flex["input_ids"].shape[0] == (4 if row_tokens is None else 2)
    drop = ("labels", "segments", "record_names", "pair_index", "pair_bounds")
    assert packing_unsupported(model) is None
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        expected = model(**{k: v for k, v in dense.items() if k not in drop}).logits
        model.set_attn_implementation("flex_attention")
        mask = pair_block_mask(flex["pair_index"], flex["pair_bounds"])
        got = model(**{k: v for k, v in flex.items() if k not in drop}, attention_mask=mask).logits
    assert packing_unsupported(model) is None
    real = flex["segments"] > 0  # padding rows attend to themselves only on both paths, but compare what is read
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)


def test_fast_trainer_on_flex_reference_logps_and_cpu_backward(tmp_path):
    """The trainer picks the flex collator for a flex_attention model; its reference pass equals sdpa's; the
    training backward is what CPU FlexAttention lacks (the error is PyTorch's, kept here as the evidence)."""
    from halign.align.dpo import TrainConfig, make_dpo_config
    from halign.align.fast_dpo import FastVisionDPOTrainer

    ckpt, pairs = tiny_models.save_family("llava", tmp_path / "ckpt"), write_pairs(tmp_path)
    cfg = TrainConfig(model=str(ckpt), pairs=str(pairs), output_dir=str(tmp_path), dpo={"per_device_train_batch_size": 4})
    found = {}
    for attention in ("sdpa", "flex_attention"):
        from halign.align.model import load_policy

        model, processor = load_policy(ckpt)
        model.set_attn_implementation(attention)
        args = make_dpo_config(cfg, tmp_path / attention)
        args.disable_tqdm = True
        trainer = FastVisionDPOTrainer(model=model, args=args, processing_class=processor,
                                       train_dataset=datasets.load_from_disk(str(pairs)).select_columns(KEEP),
                                       ref_cache_dir=tmp_path / attention / "cache")
        assert trainer.data_collator.flex == (attention == "flex_attention")
        found[attention] = torch.tensor([list(trainer.train_dataset[key]) for key in ("ref_chosen_logps", "ref_rejected_logps")])
    torch.testing.assert_close(found["flex_attention"], found["sdpa"], atol=1e-5, rtol=1e-5)
    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    with pytest.raises(NotImplementedError, match="backward on CPU"):
        trainer.compute_loss(trainer.model, batch).backward()
