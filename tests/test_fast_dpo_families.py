"""The fast DPO path on every family it packs (align/packing.SUPPORTED_MODEL_TYPES) equals plain trl at step 1.

tests/test_fast_dpo.py checks LLaVA in depth (loss types, truncation, caching); here each other packed family
gets the same loss-and-gradient comparison on a tiny random checkpoint from tests/tiny_models.py.
"""

import datasets
import pytest
import torch

import tiny_models  # tests/ is on sys.path
from test_model_families import write_pairs

from halign.align.packing import SUPPORTED_MODEL_TYPES

PACKED = sorted(SUPPORTED_MODEL_TYPES - {"llava"})
LORA = {"target_modules": r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"}


def _trainers(family, root, lora):
    from trl import DPOTrainer

    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    ckpt, pairs = tiny_models.save_family(family, root / "ckpt"), write_pairs(root)
    cfg = TrainConfig(model=str(ckpt), pairs=str(pairs), output_dir=str(root),
                      dpo={"per_device_train_batch_size": 4}, peft=LORA if lora else None)
    trainers = []
    for fast in (False, True):
        args = make_dpo_config(cfg, root / ("fast" if fast else "trl"))
        args.disable_tqdm = True
        columns = ["images", "prompt", "chosen", "rejected"] + (["prompt_id"] if fast else [])
        dataset = datasets.load_from_disk(str(pairs)).select_columns(columns)
        model, processor = load_policy(ckpt)
        model.train()
        kwargs = dict(model=model, args=args, train_dataset=dataset, processing_class=processor,
                      peft_config=make_lora_config(cfg))
        trainers.append(FastVisionDPOTrainer(**kwargs, ref_cache_dir=root / "cache") if fast else DPOTrainer(**kwargs))
    return trainers


def _loss_and_grads(trainer):
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(len(trainer.train_dataset))])
    batch = trainer._prepare_inputs(batch)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("family", PACKED)
def test_packed_family_equals_trl(family, lora, tmp_path):
    reference, fast = _trainers(family, tmp_path, lora)
    generator = torch.Generator().manual_seed(1)
    params = [dict(t.model.named_parameters()) for t in (reference, fast)]
    with torch.no_grad():  # move both policies off the reference identically
        for name, param in params[0].items():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=generator) * 0.05
                for other in params:
                    other[name].add_(noise)
    (loss_a, grads_a), (loss_b, grads_b) = _loss_and_grads(reference), _loss_and_grads(fast)
    assert abs(loss_a - loss_b) < 1e-5, (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and grads_a
    assert max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a) < 1e-5
    assert any(g.abs().max() > 1e-4 for g in grads_a.values())
