"""The fast DPO trainer's reference cache can never go stale, and its reference is the one trl uses.

Mutation-style: each input of the cache key (align/ref_cache.py) changed alone gives another key; an image
rewritten in place, a processor or a reference changed in memory gives another key *and* the right values.
"""

import json
import shutil
import weakref

from pathlib import Path

import pytest
import torch
from test_fast_dpo import KEEP, _assert_same, _build, _perturb


def _pairs_with_own_images(pairs_dataset, tmp_path, rotate: bool = False):
    """The pairs saved again to tmp_path/pairs with their images at tmp_path/image_*.png, rotated if asked:
    a pairs folder rewritten in place with the same texts and image paths but other pixels."""
    import datasets
    from PIL import Image

    from halign.data_gen.pairs import to_dataset

    source = datasets.load_from_disk(str(pairs_dataset))
    rows = []
    for i, row in enumerate(source):
        path = tmp_path / f"image_{i}.png"
        image = row["images"][0]
        (image.transpose(Image.Transpose.ROTATE_90) if rotate else image).save(path)
        rows.append({**{k: row[k] for k in ("prompt", "chosen", "rejected", "chosen_score", "rejected_score",
                                            "judge", "prompt_id")}, "image_paths": [str(path)]})
    to_dataset(rows).save_to_disk(str(tmp_path / "pairs.new"))
    shutil.rmtree(tmp_path / "pairs", ignore_errors=True)
    (tmp_path / "pairs.new").rename(tmp_path / "pairs")
    return tmp_path / "pairs"


def test_each_key_input_changed_alone_changes_the_key(tiny_checkpoint, pairs_dataset, tmp_path, monkeypatch):
    from halign.align import ref_cache
    from halign.align.mdpo import MdpoConfig

    trainer = _build(tiny_checkpoint, pairs_dataset, tmp_path, fast=True, lora=True)
    dataset = trainer.train_dataset.select_columns(KEEP + ["prompt_id"])
    base = trainer.describe_reference_inputs(dataset)
    assert ref_cache.key_of(base) == trainer.ref_cache.key  # the key the cache was written under
    model = trainer.accelerator.unwrap_model(trainer.model)
    processor = trainer.processing_class

    def changed_parts(mutate, undo) -> list[str]:
        mutate()
        try:
            now = trainer.describe_reference_inputs(dataset)
        finally:
            undo()
        assert trainer.describe_reference_inputs(dataset) == base  # undone
        return [name for name in base if base[name] != now[name]]

    weight = model.get_input_embeddings().weight
    lora_b = next(p for n, p in model.named_parameters() if "lora_B.default" in n)
    saved = {"weight": weight.data.clone(), "lora_b": lora_b.data.clone()}
    layer, mean, template = model.config.vision_feature_layer, list(processor.image_processor.image_mean), \
        processor.chat_template
    mutations = {
        "reference": (lambda: weight.data[0, 0].add_(1.0), lambda: weight.data.copy_(saved["weight"])),
        "model_config": (lambda: setattr(model.config, "vision_feature_layer", -2),
                         lambda: setattr(model.config, "vision_feature_layer", layer)),
        "processor": (lambda: setattr(processor.image_processor, "image_mean", [0.1, 0.2, 0.3]),
                      lambda: setattr(processor.image_processor, "image_mean", mean)),
        "max_length": (lambda: setattr(trainer.args, "max_length", 24), lambda: setattr(trainer.args, "max_length", None)),
        "dtype": (lambda: setattr(trainer.args, "bf16", True), lambda: setattr(trainer.args, "bf16", False)),
        "mdpo": (lambda: setattr(trainer, "mdpo", MdpoConfig(crop_area=(0.0, 0.5))), lambda: setattr(trainer, "mdpo", None)),
        "libraries": (lambda: monkeypatch.setattr(ref_cache, "library_versions", lambda: {"torch": "0.0"}),
                      monkeypatch.undo),
    }
    for part, (mutate, undo) in mutations.items():
        assert changed_parts(mutate, undo) == [part], part
    assert changed_parts(lambda: setattr(processor, "chat_template", template + " "),
                         lambda: setattr(processor, "chat_template", template)) == ["processor"]
    assert changed_parts(lambda: model.config.get_text_config().__setattr__("_attn_implementation", "eager"),
                         lambda: model.config.get_text_config().__setattr__("_attn_implementation", "sdpa")) \
        == ["model_config"]
    # The trainable adapter is not the reference: training it must not change the key.
    assert changed_parts(lambda: lora_b.data.add_(1.0), lambda: lora_b.data.copy_(saved["lora_b"])) == []
    # One pair's text changed alone.
    edited = dataset.map(lambda row, i: {"chosen": [{"role": "assistant", "content": "a blue star."}]} if i == 3 else {},
                         with_indices=True)
    assert [n for n in base if base[n] != trainer.describe_reference_inputs(edited)[n]] == ["dataset"]


def test_changed_processor_or_image_bytes_miss_the_cache_and_say_why(tiny_checkpoint, pairs_dataset, tmp_path):
    """Same run folder, same weights: a changed processor, then images rewritten in place (same paths, same
    texts) are each recomputed, with the values a fresh cache gives, never the stale ones."""
    pairs = _pairs_with_own_images(pairs_dataset, tmp_path)
    cache = tmp_path / "cache"
    first = _build(tiny_checkpoint, pairs, tmp_path, fast=True, lora=True, cache_dir=cache)
    assert not first.ref_cache_hit and first.ref_cache_file.exists()
    description = json.loads(first.ref_cache_file.with_suffix(".json").read_text())
    assert description["depends_on"]["dataset"]["pairs"] == 8 and description["computed"]["pairs_per_rank"] == [8]

    _pairs_with_own_images(pairs_dataset, tmp_path, rotate=True)  # same texts and paths, other pixels
    second = _build(tiny_checkpoint, pairs, tmp_path, fast=True, lora=True, cache_dir=cache)
    assert not second.ref_cache_hit and second.ref_cache_file != first.ref_cache_file
    assert "dataset.digest" in second.ref_cache.explain_miss()
    fresh = _build(tiny_checkpoint, pairs, tmp_path, fast=True, lora=True, cache_dir=tmp_path / "fresh")
    assert second.train_dataset["ref_chosen_logps"] == fresh.train_dataset["ref_chosen_logps"]
    assert second.train_dataset["ref_chosen_logps"] != first.train_dataset["ref_chosen_logps"]

    changed = tmp_path / "changed_processor"
    shutil.copytree(tiny_checkpoint, changed)
    config_file = changed / "processor_config.json"
    config = json.loads(config_file.read_text())
    config["image_processor"]["image_mean"] = [0.1, 0.2, 0.3]
    config_file.write_text(json.dumps(config))
    third = _build(tiny_checkpoint, pairs, tmp_path, fast=True, lora=True, cache_dir=cache, checkpoint=changed)
    assert not third.ref_cache_hit and "processor.settings" in third.ref_cache.explain_miss()
    assert third.train_dataset["ref_chosen_logps"] != second.train_dataset["ref_chosen_logps"]


def test_continued_adapter_is_its_own_reference_as_in_trl(tiny_checkpoint, pairs_dataset, tmp_path):
    """A PeftModel with a trained adapter: trl's reference is that adapter as loaded (step-0 loss log 2)."""
    import datasets
    from peft import get_peft_model
    from trl import DPOTrainer

    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    cfg = TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path),
                      dpo={"per_device_train_batch_size": 8})
    trainers = []
    for fast in (False, True):
        model, processor = load_policy(tiny_checkpoint)
        torch.manual_seed(0)  # the same adapter on both sides
        model = get_peft_model(model, make_lora_config(cfg))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)  # an adapter that moved away from the base
        model.train()
        args = make_dpo_config(cfg, tmp_path / ("fast" if fast else "trl"))
        args.disable_tqdm = True
        dataset = datasets.load_from_disk(str(pairs_dataset)).select_columns(KEEP + (["prompt_id"] if fast else []))
        cls = FastVisionDPOTrainer if fast else DPOTrainer
        trainers.append(cls(model=model, args=args, train_dataset=dataset, processing_class=processor))
    trl_side, fast = trainers
    assert fast.ref_cache.description["reference"]["source"] == "adapter 'ref' as loaded"
    batch = fast._prepare_inputs(fast.data_collator([dict(r) for r in fast.train_dataset]))
    assert abs(fast.compute_loss(fast.model, batch).item() - 0.693147) < 1e-5  # policy == reference at step 0
    assert not any(p.requires_grad for n, p in fast.model.named_parameters() if ".ref." in n)
    _perturb([trl_side, fast])
    _assert_same(trl_side, fast)


def test_explicit_ref_model_is_keyed_by_its_weights(tiny_checkpoint, pairs_dataset, tmp_path):
    """Two reference models from the same folder, one changed in memory: two keys, each with its own values."""
    from halign.align.model import load_policy

    values = []
    for scale in (1.0, 1.5):
        ref_model, _ = load_policy(tiny_checkpoint)
        with torch.no_grad():
            ref_model.get_output_embeddings().weight.mul_(scale)
        trainer = _build_with_ref(tiny_checkpoint, pairs_dataset, tmp_path, ref_model)
        assert trainer.ref_cache.description["reference"]["source"] == "ref_model"
        values.append((trainer.ref_cache_file, trainer.ref_cache_hit, trainer.train_dataset["ref_chosen_logps"]))
        assert trainer.ref_model is None  # dropped after the reference pass
    (file_a, _, logps_a), (file_b, hit_b, logps_b) = values
    assert file_a != file_b and not hit_b and logps_a != logps_b


def _build_with_ref(checkpoint, pairs_dataset, tmp_path, ref_model):
    import datasets

    from halign.align.dpo import TrainConfig, make_dpo_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    cfg = TrainConfig(model=str(checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path), peft=None,
                      dpo={"per_device_train_batch_size": 8})
    args = make_dpo_config(cfg, tmp_path / "explicit")
    args.disable_tqdm = True
    model, processor = load_policy(checkpoint)
    model.train()
    dataset = datasets.load_from_disk(str(pairs_dataset)).select_columns(KEEP + ["prompt_id"])
    return FastVisionDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                                processing_class=processor, ref_cache_dir=tmp_path / "cache")


def test_full_mode_holds_one_model_and_caches_in_the_run_folder(tiny_checkpoint, pairs_dataset, tmp_path,
                                                                monkeypatch):
    """trl's reference copy is freed (the accelerator's handle too); the cache goes under the trainer's output
    folder, so a read-only pairs folder works."""
    import os
    import stat

    from halign.align.fast_dpo import FastVisionDPOTrainer

    pairs = tmp_path / "readonly_pairs"
    shutil.copytree(pairs_dataset, pairs)
    for path in [pairs, *pairs.rglob("*")]:
        os.chmod(path, stat.S_IREAD | stat.S_IEXEC if path.is_dir() else stat.S_IREAD)
    copies = []
    release = FastVisionDPOTrainer.release_reference_copy

    def watched(self):
        copies.append(weakref.ref(self.ref_model))
        release(self)

    monkeypatch.setattr(FastVisionDPOTrainer, "release_reference_copy", watched)
    try:
        trainer = _build(tiny_checkpoint, pairs, tmp_path, fast=True, lora=False, cache_dir="run folder")
        import gc

        gc.collect()
        assert copies and copies[0]() is None  # nothing holds trl's reference copy any more
        assert trainer.ref_model is None
        assert trainer.ref_cache_file.parent == tmp_path / "fast" / "ref_logps" and trainer.ref_cache_file.exists()
        assert sorted(p.name for p in pairs.iterdir()) == sorted(p.name for p in pairs_dataset.iterdir())
    finally:
        for path in [pairs, *pairs.rglob("*")]:
            os.chmod(path, stat.S_IRWXU)


def test_cli_no_fast_and_full_training_from_a_lora_folder(tiny_checkpoint, pairs_dataset, tmp_path, capsys):
    from halign.recipes.cli import main

    common = ["--pairs", str(pairs_dataset), "dpo.max_steps=1", "dpo.per_device_train_batch_size=4"]
    assert main(["train", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "lora"), "--no-fast",
                 "--row-tokens", "512", *common]) == 0
    assert json.loads((tmp_path / "lora" / "manifest.json").read_text())["trainer"] == "DPOTrainer"
    assert "row_tokens=512 ignored" in capsys.readouterr().out  # trl's trainer: one pair per row, said so
    assert main(["train", "--model", str(tmp_path / "lora"), "--out", str(tmp_path / "full"), "--full", *common]) == 0
    assert "merging" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert manifest["trainer"] == "FastVisionDPOTrainer" and manifest["mode"] == "full"
    assert (tmp_path / "full" / "merged_input" / "config.json").exists()


RECIPE = {"model": "toy", "source": {"type": "toy_world"}, "eval": None}


def test_recipe_key_train_fast():
    from halign.recipes.config import resolve

    assert resolve({**RECIPE, "train": {"fast": False}})["train"]["fast"] is False
    assert "fast" not in resolve(RECIPE)["train"]  # unset: earlier recipes keep their hash
    with pytest.raises(ValueError, match="train.fast"):
        resolve({**RECIPE, "train": {"fast": "no"}})


def test_recipe_key_train_row_tokens():
    from halign.recipes.config import resolve
    from halign.recipes.stages import train_config

    cfg = resolve({**RECIPE, "train": {"row_tokens": 2048}})
    assert train_config(cfg, Path("run"), "ckpt")["row_tokens"] == 2048
    assert "row_tokens" not in resolve(RECIPE)["train"]  # unset: earlier recipes keep their hash
    for bad in (0, "many", True):
        with pytest.raises(ValueError, match="train.row_tokens"):
            resolve({**RECIPE, "train": {"row_tokens": bad}})


def test_cli_overrides_read_exponent_floats():
    from halign.align.dpo import parse_value

    assert parse_value("1e-4") == 1e-4 and parse_value("5.0e-4") == 5e-4  # YAML 1.1 alone reads "1e-4" as text
    assert parse_value("[sigmoid,sft]") == ["sigmoid", "sft"] and parse_value("e5") == "e5"
