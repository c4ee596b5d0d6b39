"""mDPO (align/mdpo.py + the fast trainer): the loss equals a hand computation from plain, unpacked forwards."""

import json

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from halign.align.mdpo import MdpoConfig, corrupt_image, crop_box, mdpo_losses, record_key

KEEP = ["images", "prompt", "chosen", "rejected", "prompt_id"]


def _trainer(tiny_checkpoint, pairs_dataset, tmp_path, mdpo, lora=True, beta=0.1):
    import datasets

    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    cfg = TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path),
                      dpo={"per_device_train_batch_size": 8, "beta": beta}, peft={} if lora else None)
    args = make_dpo_config(cfg, tmp_path / "trainer")
    args.disable_tqdm = True
    model, processor = load_policy(cfg.model)
    model.train()
    dataset = datasets.load_from_disk(str(pairs_dataset)).select_columns(KEEP)
    return FastVisionDPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                                peft_config=make_lora_config(cfg), ref_cache_dir=tmp_path / "cache", mdpo=mdpo)


def _answer_logp(model, processor, prompt_text, answer_text, image):
    """log p(answer | prompt, image) from one plain causal forward: no packing, no 4D mask."""
    prompt = processor(images=[[image]], text=[prompt_text], return_tensors="pt", add_special_tokens=False)
    answer = processor.tokenizer(answer_text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = torch.cat([prompt["input_ids"], answer], dim=1)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=prompt["pixel_values"]).logits
    n = prompt["input_ids"].shape[1]
    logps = F.log_softmax(logits[0, n - 1:-1].float(), dim=-1)
    return logps.gather(1, answer[0][:, None]).sum()


def _hand_logps(trainer, examples, cfg):
    """(chosen, rejected, chosen with the corrupted image) log-probs per pair, each from its own forward."""
    texts = trainer.data_collator._texts(examples)
    out = []
    for example, text in zip(examples, texts, strict=True):
        image = example["images"][0]
        corrupted = corrupt_image(image, record_key(example), 0, cfg)
        out.append(torch.stack([_answer_logp(trainer.model, trainer.processing_class, text["prompt"], text[side], im)
                                for side, im in (("chosen", image), ("rejected", image), ("chosen", corrupted))]))
    return torch.stack(out)  # [pairs, 3]


def _grads(loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_mdpo_loss_and_grads_equal_hand_computation(tiny_checkpoint, pairs_dataset, tmp_path, lora):
    cfg = MdpoConfig(anchor_weight=0.5, conditional_weight=2.0, anchor_margin=0.1)
    beta = 0.5
    trainer = _trainer(tiny_checkpoint, pairs_dataset, tmp_path, cfg, lora=lora, beta=beta)
    examples = [dict(trainer.train_dataset[i]) for i in range(len(trainer.train_dataset))]
    with torch.no_grad():  # the policy still equals the reference here
        reference = _hand_logps(trainer, examples, cfg)
    precomputed = torch.tensor([[e["ref_chosen_logps"], e["ref_rejected_logps"], e["ref_corrupted_chosen_logps"]]
                                for e in examples])
    assert (reference - precomputed).abs().max() < 1e-4

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the policy off the reference so every term has a gradient
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    params = [p for p in trainer.model.parameters() if p.requires_grad]

    policy = _hand_logps(trainer, examples, cfg)
    ratios = policy - reference
    dpo = -F.logsigmoid(beta * (ratios[:, 0] - ratios[:, 1]))
    conditional = -F.logsigmoid(beta * (ratios[:, 0] - ratios[:, 2]))
    anchor = -F.logsigmoid(beta * ratios[:, 0] - 0.1)
    expected = dpo.mean() + 2.0 * conditional.mean() + 0.5 * anchor.mean()
    # allow_unused: full mode also lists weights no forward uses (e.g. the vision tower's unused last layer).
    expected_grads = _grads(expected, params)

    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    loss = trainer.compute_loss(trainer.model, batch)
    grads = _grads(loss, params)
    assert abs(loss.item() - expected.item()) < 1e-5, (loss.item(), expected.item())
    worst = max((a - b).abs().max().item() for a, b in zip(grads, expected_grads, strict=True))
    assert worst < 1e-5, worst
    assert conditional.mean() > 0 and any(g.abs().max() > 1e-4 for g in grads)
    assert "mdpo/image_margins" in trainer._metrics["train"]


def test_corruption_is_deterministic_and_keeps_at_most_the_crop_area():
    image = Image.new("RGB", (48, 40), (255, 255, 255))
    image.paste((200, 0, 0), (10, 10, 30, 30))
    cfg = MdpoConfig()
    first, again = corrupt_image(image, "rec-1", 0, cfg), corrupt_image(image, "rec-1", 0, cfg)
    assert first.size == image.size and first.tobytes() == again.tobytes()
    import random

    rng = random.Random(0)
    for _ in range(500):
        left, top, right, bottom = crop_box(48, 40, rng, (0.0, 0.2))
        assert 0 <= left < right <= 48 and 0 <= top < bottom <= 40
        assert (right - left) * (bottom - top) <= 0.2 * 48 * 40 * 1.15 + 2  # rounding of the side lengths
    boxes = {crop_box(48, 40, random.Random(s), (0.0, 0.2)) for s in range(50)}
    assert len(boxes) > 40  # different records get different crops


def test_mdpo_settings_fail_clearly():
    assert MdpoConfig.from_setting(True) == MdpoConfig()
    assert MdpoConfig.from_setting(False) is None and MdpoConfig.from_setting(None) is None
    assert MdpoConfig.from_setting({"crop_area": [0.1, 0.3]}).crop_area == (0.1, 0.3)
    with pytest.raises(ValueError, match="unknown mdpo key.*crop"):
        MdpoConfig.from_setting({"crop": 0.2})
    with pytest.raises(ValueError, match="crop_area"):
        MdpoConfig(crop_area=(0.5, 0.2))
    zero = torch.zeros(3)
    conditional, anchor = mdpo_losses(0.1, zero, zero, MdpoConfig())
    assert torch.allclose(conditional, torch.full((3,), 0.6931), atol=1e-4) and torch.allclose(anchor, conditional)


def test_ref_cache_keys_on_mdpo_settings(tiny_checkpoint, pairs_dataset, tmp_path):
    plain = _trainer(tiny_checkpoint, pairs_dataset, tmp_path, None)
    first = _trainer(tiny_checkpoint, pairs_dataset, tmp_path, MdpoConfig())
    again = _trainer(tiny_checkpoint, pairs_dataset, tmp_path, MdpoConfig(anchor_weight=3.0))  # loss-only change
    other = _trainer(tiny_checkpoint, pairs_dataset, tmp_path, MdpoConfig(crop_area=(0.1, 0.3)))
    assert len({plain.ref_cache_file, first.ref_cache_file, other.ref_cache_file}) == 3
    assert again.ref_cache_file == first.ref_cache_file and again.ref_cache_hit
    assert "ref_corrupted_chosen_logps" not in plain.train_dataset.column_names


def test_train_with_mdpo_end_to_end(tiny_checkpoint, pairs_dataset, tmp_path):
    from halign.align.dpo import TrainConfig, train

    out = train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "out"),
                            dpo={"num_train_epochs": 1, "per_device_train_batch_size": 4, "logging_steps": 1},
                            mdpo=True), progress=False)
    log = json.loads((out / "train_log.json").read_text())
    assert any("mdpo/image_margins" in row for row in log)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["mdpo"] is True and manifest["trainer"] == "FastVisionDPOTrainer"
    with pytest.raises(ValueError, match="mdpo needs the fast DPO trainer"):
        train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "o2"),
                          mdpo=True, fast=False), progress=False)
    with pytest.raises(ValueError, match="unknown mdpo key"):
        train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "o3"),
                          mdpo={"weight": 1}), progress=False)


def test_train_cli_mdpo_flags(tiny_checkpoint, pairs_dataset, tmp_path, capsys):
    from halign.recipes.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--model", str(tiny_checkpoint), "--pairs", str(pairs_dataset), "--out", str(out),
                 "--mdpo", "mdpo.crop_area=[0.05,0.1]", "dpo.num_train_epochs=1",
                 "dpo.per_device_train_batch_size=8"]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["mdpo"] == {"crop_area": [0.05, 0.1]}
    assert main(["train", "--model", str(tiny_checkpoint), "--pairs", str(pairs_dataset), "--out",
                 str(tmp_path / "x"), "mdpo.anchor_weight=2"]) == 2  # settings without --mdpo: one clear error line
    assert "without --mdpo" in capsys.readouterr().err
