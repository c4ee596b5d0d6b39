"""The fast vision DPO path computes plain trl.DPOTrainer's loss and gradients (align/fast_dpo.py)."""

import shutil

import pytest
import torch

KEEP = ["images", "prompt", "chosen", "rejected"]


def _build(tiny_checkpoint, pairs_dataset, tmp_path, fast: bool, lora: bool, dpo: dict | None = None,
           checkpoint=None, cache_dir=None, attention=None, row_tokens=None):
    import datasets
    from trl import DPOTrainer

    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    cfg = TrainConfig(model=str(checkpoint or tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path),
                      dpo={"per_device_train_batch_size": 8, **(dpo or {})}, peft={} if lora else None)
    args = make_dpo_config(cfg, tmp_path / ("fast" if fast else "trl"))
    args.disable_tqdm = True
    dataset = datasets.load_from_disk(str(pairs_dataset)).select_columns(KEEP + (["prompt_id"] if fast else []))
    model, processor = load_policy(cfg.model)
    if attention:
        model.set_attn_implementation(attention)
    model.train()
    if fast:
        return FastVisionDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                                    peft_config=make_lora_config(cfg),
                                    # "run folder": the trainer's default, <output_dir>/ref_logps
                                    ref_cache_dir=None if cache_dir == "run folder" else cache_dir or tmp_path / "cache",
                                    row_tokens=row_tokens)
    return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                      peft_config=make_lora_config(cfg))


def _perturb(trainers, seed=1, scale=0.05):
    """Move the policies off the reference, identically, so log-ratios and every gradient are non-trivial."""
    generator = torch.Generator().manual_seed(seed)
    params = [dict(t.model.named_parameters()) for t in trainers]
    with torch.no_grad():
        for name, param in params[0].items():
            if not param.requires_grad:
                continue
            noise = torch.randn(param.shape, generator=generator) * scale
            for other in params:
                other[name].add_(noise)


def _loss_and_grads(trainer):
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(len(trainer.train_dataset))])
    batch = trainer._prepare_inputs(batch)
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _assert_same(reference, fast):
    (loss_a, grads_a), (loss_b, grads_b) = _loss_and_grads(reference), _loss_and_grads(fast)
    assert torch.isfinite(loss_a) and abs(loss_a.item() - loss_b.item()) < 1e-5, (loss_a.item(), loss_b.item())
    assert grads_a.keys() == grads_b.keys() and grads_a
    worst = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    assert worst < 1e-5, worst
    assert any(g.abs().max() > 1e-4 for g in grads_a.values())


@pytest.mark.parametrize("lora,attention", [(True, "sdpa"), (False, "sdpa"), (True, "eager"), (False, "eager")],
                         ids=["lora-sdpa", "full-sdpa", "lora-eager", "full-eager"])
def test_loss_and_grads_equal_trl(tiny_checkpoint, pairs_dataset, tmp_path, lora, attention):
    reference = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=False, lora=lora, attention=attention)
    fast = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=lora, attention=attention)
    assert fast.model.config.get_text_config()._attn_implementation == attention
    assert fast.ref_model is None  # no reference copy held during training
    batch = fast.data_collator([dict(r) for r in fast.train_dataset])
    prompt_lengths = (batch["segments"] == 1).int().argmax(dim=1)  # where chosen starts
    assert len(set(prompt_lengths.tolist())) > 1  # prompts of different lengths: the processor left-pads them
    _perturb([reference, fast])
    _assert_same(reference, fast)


@pytest.mark.parametrize("lora,attention,dpo", [
    (True, "sdpa", {}), (False, "eager", {}), (True, "sdpa", {"loss_type": ["ipo", "sft"], "loss_weights": [1.0, 0.3]}),
    (True, "sdpa", {"max_length": 24})], ids=["lora-sdpa", "full-eager", "ipo+sft", "truncated"])
def test_several_pairs_per_row_equal_trl(tiny_checkpoint, pairs_dataset, tmp_path, lora, attention, dpo):
    """Padding-free rows (row_tokens): whole pairs share rows, each with its own positions and a block of the
    mask; loss, per-pair terms (ipo's token counts) and gradients still equal trl's."""
    reference = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=False, lora=lora, attention=attention, dpo=dpo)
    fast = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=lora, attention=attention, dpo=dpo,
                  row_tokens=100)
    batch = fast.data_collator([dict(r) for r in fast.train_dataset])
    pairs_per_row = [len(set(row.tolist()) - {-1}) for row in batch["pair_index"]]
    assert max(pairs_per_row) >= 2 and sum(pairs_per_row) == len(fast.train_dataset), pairs_per_row
    assert batch["input_ids"].shape[1] <= 100
    # Positions restart with every pair: as many zeros per row as pairs in it.
    starts = (batch["position_ids"] == 0) & (batch["pair_index"] >= 0)
    assert starts.sum(dim=1).tolist() == pairs_per_row
    _perturb([reference, fast])
    _assert_same(reference, fast)


def test_one_pair_rows_and_packed_rows_give_the_same_reference_logps(tiny_checkpoint, pairs_dataset, tmp_path):
    one = _build(tiny_checkpoint, pairs_dataset, tmp_path / "one", fast=True, lora=True)
    packed = _build(tiny_checkpoint, pairs_dataset, tmp_path / "packed", fast=True, lora=True, row_tokens=200)
    for key in ("ref_chosen_logps", "ref_rejected_logps"):
        torch.testing.assert_close(torch.tensor(packed.train_dataset[key]), torch.tensor(one.train_dataset[key]),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dpo", [
    {"loss_type": ["ipo"], "beta": 0.5},
    {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.3]},
    {"loss_type": ["sigmoid", "hinge"], "max_length": 24},  # prompts are 15 tokens: completions cut
], ids=["ipo", "sigmoid+sft", "truncated"])
def test_loss_mixtures_and_truncation_equal_trl(tiny_checkpoint, pairs_dataset, tmp_path, dpo):
    reference = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=False, lora=True, dpo=dpo)
    fast = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True, dpo=dpo)
    _perturb([reference, fast])
    _assert_same(reference, fast)


def test_precomputed_ref_logps_equal_trl_on_the_fly(tiny_checkpoint, pairs_dataset, tmp_path):
    reference = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=False, lora=False)
    fast = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=False)
    batch = reference._prepare_inputs(reference.data_collator([dict(r) for r in reference.train_dataset]))
    chosen, rejected = reference.compute_ref_log_probs(reference.ref_model, batch)
    ours = fast.train_dataset
    torch.testing.assert_close(torch.tensor(ours["ref_chosen_logps"]), chosen.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(ours["ref_rejected_logps"]), rejected.float(), atol=1e-5, rtol=0)


def test_ref_cache_reused_and_invalidated(tiny_checkpoint, pairs_dataset, tmp_path):
    from transformers import AutoModelForImageTextToText

    cache = tmp_path / "cache"
    first = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True, cache_dir=cache)
    assert not first.ref_cache_hit and first.ref_cache_file.exists()
    second = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True, cache_dir=cache)
    assert second.ref_cache_hit and second.ref_cache_file == first.ref_cache_file
    assert second.train_dataset["ref_chosen_logps"] == first.train_dataset["ref_chosen_logps"]
    # Other reference weights: another key, recomputed, different values.
    changed = tmp_path / "changed_checkpoint"
    shutil.copytree(tiny_checkpoint, changed)
    model = AutoModelForImageTextToText.from_pretrained(changed)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(1.5)
    model.save_pretrained(changed)
    third = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True, cache_dir=cache, checkpoint=changed)
    assert not third.ref_cache_hit and third.ref_cache_file != first.ref_cache_file
    assert third.train_dataset["ref_chosen_logps"] != first.train_dataset["ref_chosen_logps"]
    # Another max_length: another key.
    fourth = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True, cache_dir=cache,
                    dpo={"max_length": 24})
    assert not fourth.ref_cache_hit and fourth.ref_cache_file != first.ref_cache_file


def _collator(tiny_checkpoint, max_length):
    from transformers import AutoProcessor

    from halign.align.packing import PackedPairCollator

    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    return PackedPairCollator(processor, max_length), processor


def test_truncation_never_cuts_image_tokens(tiny_checkpoint, pairs_dataset):
    import datasets

    dataset = datasets.load_from_disk(str(pairs_dataset))
    full, processor = _collator(tiny_checkpoint, None)
    untruncated = full([dict(r) for r in dataset])
    image_id = processor.image_token_id
    per_row = (untruncated["input_ids"] == image_id).sum(dim=1)
    for max_length in (16, 20, 24):
        collator, _ = _collator(tiny_checkpoint, max_length)
        try:
            batch = collator([dict(r) for r in dataset])
        except ValueError:
            continue  # that limit is below some prompt: covered by the next test
        assert torch.equal((batch["input_ids"] == image_id).sum(dim=1), per_row)  # every image token kept
        from halign.align.packing import CHOSEN, REJECTED

        for segment in (CHOSEN, REJECTED):
            kept = (batch["segments"] == segment).sum(dim=1)
            prompt = (batch["position_ids"] * (batch["segments"] == segment)).amax(dim=1) + 1 - kept
            assert ((prompt + kept) <= max_length).all()
            assert (kept >= 1).all()
        assert (batch["segments"] == CHOSEN).sum() < (untruncated["segments"] == CHOSEN).sum()
        return
    pytest.fail("no max_length in the sweep truncated completions without rejecting a prompt")


def test_prompt_longer_than_max_length_names_the_record(tiny_checkpoint, pairs_dataset):
    import datasets

    dataset = datasets.load_from_disk(str(pairs_dataset))
    collator, _ = _collator(tiny_checkpoint, 10)
    with pytest.raises(ValueError, match=f"record '{dataset[0]['prompt_id']}'.*image tokens.*max_length 10"):
        collator([dict(r) for r in dataset])


def test_unsupported_loss_type_fails_clearly(tiny_checkpoint, pairs_dataset, tmp_path):
    with pytest.raises(ValueError, match="loss_type.*nca_pair"):
        _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True, dpo={"loss_type": ["nca_pair"]})


def test_train_fast_wiring(tiny_checkpoint, pairs_dataset, tmp_path):
    from halign.align.dpo import TrainConfig, train

    out = train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "out"),
                            dpo={"num_train_epochs": 1, "per_device_train_batch_size": 4, "logging_steps": 1},
                            fast=True), progress=False)
    assert (out / "adapter_config.json").exists()


def test_families_without_custom_masks_fall_back():
    from tiny_models import FAMILIES, build_family

    from halign.align.packing import SUPPORTED_MODEL_TYPES, packing_unsupported
    from halign.align.packing_flex import run_flash_on_flex

    assert set(FAMILIES) <= SUPPORTED_MODEL_TYPES  # every tested family packs (tests/test_fast_dpo_families.py)
    model, _ = build_family("llava", with_processor=False)
    assert packing_unsupported(model) is None
    model.config.get_text_config()._attn_implementation = "flash_attention_2"  # ignores custom 4D masks
    assert packing_unsupported(model) is None  # ...so its language model is switched to flex_attention
    assert run_flash_on_flex(model) and model.config.get_text_config()._attn_implementation == "flex_attention"
    qwen, _ = build_family("qwen2_5_vl", with_processor=False)
    qwen.config.get_text_config()._attn_implementation = "flash_attention_2"  # no flex in transformers: trl's path
    assert "no flex_attention" in packing_unsupported(qwen)
    model.config.get_text_config()._attn_implementation = "sdpa"
    model.config.model_type = "mllama"  # a family never checked against trl
    assert "mllama" in packing_unsupported(model)


def test_sliding_window_rows_refused_where_the_mask_cannot_apply_it():
    """PaliGemma 2's forward reuses one 4D mask for its sliding layers: a longer row is an error, not a change."""
    from PIL import Image
    from tiny_models import build_family

    from halign.align.packing import PackedPairCollator
    from halign.align.packing_families import FamilyLayout

    processor = build_family("paligemma")[1]
    layout = FamilyLayout(position_offset=1, bidirectional_prefix=True, sliding_window=8)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    example = {"prompt_id": "p0", "images": [image], "prompt": [{"role": "user", "content": "describe the image ."}],
               "chosen": [{"role": "assistant", "content": "a red square ."}],
               "rejected": [{"role": "assistant", "content": "a blue circle ."}]}
    with pytest.raises(ValueError, match=r"record 'p0'.*sliding window \(8\)"):
        PackedPairCollator(processor, layout=layout)([example])
    batch = PackedPairCollator(processor, layout=FamilyLayout(position_offset=1, bidirectional_prefix=True))([example])
    assert batch["position_ids"][0, 0] == 1  # PaliGemma positions are 1-indexed
    # The processor's prompt-shaped token_type_ids and BC labels are not passed on: the packed row has its own.
    assert "token_type_ids" not in batch and batch["labels"].shape == batch["input_ids"].shape


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_packed_mrope_positions_equal_the_models_own(family):
    """Qwen's 3D rope positions in a packed row are get_rope_index's on the unpacked prompt+chosen and
    prompt+rejected sequences, with non-square images and two images in one prompt."""
    from PIL import Image
    from tiny_models import build_family

    from halign.align.packing import PackedPairCollator, mrope_merge_size

    model, processor = build_family(family)
    sizes = [[(32, 16)], [(24, 32), (16, 16)]]  # (width, height) per image, per pair
    examples = [{"images": [Image.new("RGB", size, (200, 30, 30)) for size in row],
                 "prompt": [{"role": "user", "content": "what is in the image ?"}],
                 "chosen": [{"role": "assistant", "content": "a red circle ."}],
                 "rejected": [{"role": "assistant", "content": "a blue square and a star on the left ."}]}
                for row in sizes]
    batch = PackedPairCollator(processor, mrope_merge_size=mrope_merge_size(model))(examples)
    grids = batch["image_grid_thw"].split([len(row) for row in sizes])
    assert batch["position_ids"].shape == (3, *batch["input_ids"].shape)
    assert len({tuple(g[1:].tolist()) for g in batch["image_grid_thw"]}) == 3  # non-square grids are tested

    def rope_index(ids, grid):
        ids = ids[None]
        return model.model.get_rope_index(ids, mm_token_type_ids=(ids == processor.image_token_id).int(),
                                          image_grid_thw=grid)[0][:, 0]

    for i, grid in enumerate(grids):
        ids, positions, segments = batch["input_ids"][i], batch["position_ids"][:, i], batch["segments"][i]
        chosen, rejected = (segments == 1).nonzero()[:, 0], (segments == 2).nonzero()[:, 0]
        n, x, end = int(chosen[0]), int(chosen[-1]) + 1, int(rejected[-1]) + 1
        assert torch.equal(positions[:, :x], rope_index(ids[:x], grid))  # prefix | chosen
        unpacked = rope_index(torch.cat([ids[:n], ids[x + 1:end]]), grid)  # prefix | rejected
        assert torch.equal(positions[:, x], unpacked[:, n - 1])  # x sits at the prefix's last position
        assert torch.equal(positions[:, x + 1:end], unpacked[:, n:])


def test_nan_loss_stops_with_step_and_records(tmp_path, tiny_checkpoint, pairs_dataset):
    """A non-finite loss stops training at once and names the step and the pairs of the batch."""
    import pytest

    from halign.align.dpo import TrainConfig, train

    with pytest.raises(FloatingPointError) as err:
        # beta=inf makes the sigmoid loss non-finite on the first batch.
        train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "t"),
                          dpo={"beta": float("inf"), "max_steps": 2, "per_device_train_batch_size": 2}),
              progress=False)
    message = str(err.value)
    assert "step 1" in message and "toy-dpo-" in message


@pytest.mark.parametrize("scoring", ["fused", "gather"])
def test_both_answer_scorings_equal_trl(tiny_checkpoint, pairs_dataset, tmp_path, scoring):
    """Answer log-probs from trl's fused LM head (what runs on triton devices) and from logits_to_keep (elsewhere)
    give trl's loss, gradients and logged entropy; "gather" projects exactly the answer positions."""
    reference = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=False, lora=True)
    fast = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True)
    assert fast.answer_scoring == "gather"  # CPU: trl's kernel would project every position
    fast.answer_scoring = scoring
    projected = []
    hook = fast.model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: projected.append(args[0].shape[:-1].numel()))
    _perturb([reference, fast])
    _assert_same(reference, fast)
    hook.remove()
    batch = fast.data_collator([dict(r) for r in fast.train_dataset])
    answer_tokens = int((batch["labels"] != -100).sum())
    if scoring == "gather":
        assert projected == [answer_tokens]
    entropy = [t._metrics["train"]["entropy"][-1] for t in (reference, fast)]
    assert abs(entropy[0] - entropy[1]) < 1e-4, entropy
