"""The fast DPO path on every family it packs (align/packing.SUPPORTED_MODEL_TYPES) equals plain trl at step 1.

tests/test_fast_dpo.py checks LLaVA in depth (loss types, truncation, caching); here each other packed family
gets the same loss-and-gradient comparison on a tiny random checkpoint from tests/tiny_models.py.
"""

import datasets
import pytest

import tiny_models  # tests/ is on sys.path
from test_fast_dpo import _assert_same, _perturb
from test_model_families import write_pairs

from halign.align.packing import SUPPORTED_MODEL_TYPES

PACKED = sorted(SUPPORTED_MODEL_TYPES - {"llava"})
LORA = {"target_modules": r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}


def _trainers(family, root, lora, row_tokens=None, pairs=None, columns=(), dpo=None, videos=False):
    """(trl's DPOTrainer, FastVisionDPOTrainer) on the same tiny checkpoint and pairs (`pairs`: a dataset
    folder, default write_pairs'; `columns`: extra dataset columns; `videos`: trl gets the video collator)."""
    from trl import DPOTrainer

    from halign.align.collator import make_data_collator
    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    ckpt, pairs = tiny_models.save_family(family, root / "ckpt"), pairs or write_pairs(root)
    cfg = TrainConfig(model=str(ckpt), pairs=str(pairs), output_dir=str(root),
                      dpo={"per_device_train_batch_size": 4, **(dpo or {})}, peft=LORA if lora else None)
    trainers = []
    for fast in (False, True):
        args = make_dpo_config(cfg, root / ("fast" if fast else "trl"))
        args.disable_tqdm = True
        keep = ["images", *columns, "prompt", "chosen", "rejected"] + (["prompt_id"] if fast else [])
        dataset = datasets.load_from_disk(str(pairs)).select_columns(keep)
        model, processor = load_policy(ckpt)
        model.train()
        kwargs = dict(model=model, args=args, train_dataset=dataset, processing_class=processor,
                      peft_config=make_lora_config(cfg))
        if fast:
            trainers.append(FastVisionDPOTrainer(**kwargs, ref_cache_dir=root / "cache", row_tokens=row_tokens))
        else:  # trl with the collator halign.align.dpo.train gives it (PaliGemma's prefix-LM view, else trl's own)
            trainers.append(DPOTrainer(**kwargs, data_collator=make_data_collator(processor, args, videos=videos)))
    return trainers


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", PACKED)
def test_packed_family_equals_trl(family, lora, tmp_path):
    reference, fast = _trainers(family, tmp_path, lora)
    _perturb([reference, fast])  # move both policies off the reference identically
    _assert_same(reference, fast)  # loss and every gradient within 1e-5, gradients non-trivial


@pytest.mark.parametrize("family", PACKED)
def test_several_pairs_per_row_equal_trl(family, tmp_path):
    """Padding-free rows on every packed family: images of several pairs in one row, in pair order; 3D rope
    positions, prefix-LM blocks and Gemma 3's image blocks restart with each pair."""
    reference, fast = _trainers(family, tmp_path, lora=True, row_tokens=4096)
    batch = fast.data_collator([dict(r) for r in fast.train_dataset])
    assert batch["input_ids"].shape[0] < len(fast.train_dataset)  # pairs share rows
    _perturb([reference, fast])
    _assert_same(reference, fast)
