"""Native video pairs (align/packing_video.py) on Qwen2-VL, Qwen2.5-VL and LLaVA-NeXT-Video: both DPO paths equal
plain forwards.

trl 1.16's vision collator passes no videos to the processor, so the reference here is computed by hand: each
pair's prompt+chosen and prompt+rejected go through the model as two separate, unpadded sequences with their
video inputs (the model computes its own 3D rope positions), completion log-probs are summed, the reference
model is the same checkpoint before perturbation, and the loss is trl's sigmoid one. The packed fast path
(one row per pair, and several pairs per row) and trl's DPOTrainer with `VideoPreferenceCollator` must give
that loss and its gradients within 1e-5.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tiny_models  # tests/ is on sys.path
from test_fast_dpo import _loss_and_grads, _perturb

MROPE_FAMILIES = ["qwen2_vl", "qwen2_5_vl"]
FAMILIES = [*MROPE_FAMILIES, "llava_next_video"]
BETA = 0.1
# (frames, (width, height), fps, with a still image too): 4-8 frames, odd counts padded in time, mixed prompts.
CLIPS = [(4, (32, 24), 2.0, False), (8, (24, 32), 4.0, False), (5, (32, 32), 1.0, True), (6, (16, 24), None, False)]
TEXTS = [("what is in the image ?", "a red circle .", "a blue square and a star ."),
         ("describe the image .", "a cat on the left .", "a dog ."),
         ("what is there ?", "a green triangle .", "a red star on the right and a cat ."),
         ("describe", "no .", "yes , a square .")]


def _frames(n, size, seed):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def write_video_pairs(root):
    """A pairs dataset (data_gen.pairs.to_dataset, saved) whose prompts hold clips of frame files."""
    from halign.data_gen.pairs import to_dataset

    path = root / "pairs"
    to_dataset(video_pair_rows(root)).save_to_disk(str(path))
    return path


def video_pair_rows(root):
    """Pair rows as data_gen.pairs.build_pairs writes them for native video prompts (frame files under root)."""
    rows = []
    for i, ((n, size, fps, still), (question, chosen, rejected)) in enumerate(zip(CLIPS, TEXTS, strict=True)):
        folder = root / "frames" / f"clip{i}"
        folder.mkdir(parents=True)
        paths = []
        for j, frame in enumerate(_frames(n, size, seed=i)):
            frame.save(folder / f"{j:03d}.png")
            paths.append(str(folder / f"{j:03d}.png"))
        image_paths = []
        if still:
            Image.new("RGB", (16, 16), (200, 30, 30)).save(root / f"still{i}.png")
            image_paths = [str(root / f"still{i}.png")]
        rows.append({"prompt_id": f"v{i}", "image_paths": image_paths, "video_paths": [paths], "video_fps": [fps],
                     "prompt": [{"role": "user", "content": question}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "chosen_score": 1.0, "rejected_score": 0.0, "judge": "test"})
    return rows


def _trainers(family, root, lora=False, row_tokens=None):
    """(trl's DPOTrainer with VideoPreferenceCollator, FastVisionDPOTrainer), same checkpoint and pairs."""
    from test_fast_dpo_families import _trainers as family_trainers

    trainers = family_trainers(family, root, lora, row_tokens, pairs=write_video_pairs(root),
                               columns=["videos", "video_fps"], dpo={"beta": BETA}, videos=True)
    return trainers, root / "ckpt"


def _completion_logps(model, processor, example, side):
    """log p(side | prompt) summed over the completion tokens, from one unpadded, unpacked sequence."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    from halign.align.packing_video import video_messages, video_prompt_inputs

    texts = apply_chat_template({"prompt": video_messages(example["prompt"], example["images"], example["videos"]),
                                 "chosen": prepare_multimodal_messages(example["chosen"]),
                                 "rejected": prepare_multimodal_messages(example["rejected"])}, processor)
    n = video_prompt_inputs(processor, [texts["prompt"]], [example])["input_ids"].shape[1]
    inputs = video_prompt_inputs(processor, [texts["prompt"] + texts[side]], [example])
    logits = model(**inputs, use_cache=False).logits[0, :-1].float()
    targets = inputs["input_ids"][0, 1:]
    per_token = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    return per_token[n - 1:].sum()  # the predictions of the completion tokens


def _unpacked_loss_and_grads(policy, reference, processor, examples):
    """trl's sigmoid DPO loss from plain forwards: -logsigmoid(beta * ((pc - rc) - (pr - rr))), mean over pairs."""
    losses = []
    for example in examples:
        with torch.no_grad():
            rc, rr = (_completion_logps(reference, processor, example, side) for side in ("chosen", "rejected"))
        pc, pr = (_completion_logps(policy, processor, example, side) for side in ("chosen", "rejected"))
        losses.append(-F.logsigmoid(BETA * ((pc - rc) - (pr - rr))))
    policy.zero_grad(set_to_none=True)
    loss = torch.stack(losses).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in policy.named_parameters() if p.grad is not None}


def _assert_close(reference, other):
    (loss_a, grads_a), (loss_b, grads_b) = reference, other
    assert torch.isfinite(loss_a) and abs(loss_a.item() - loss_b.item()) < 1e-5, (loss_a.item(), loss_b.item())
    assert grads_a.keys() == grads_b.keys() and grads_a
    worst = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    assert worst < 1e-5, worst
    assert any(g.abs().max() > 1e-4 for g in grads_a.values())


@pytest.mark.parametrize("row_tokens", [None, 4096], ids=["one-pair-rows", "several-pairs-per-row"])
@pytest.mark.parametrize("family", FAMILIES)
def test_video_pairs_equal_unpacked_forwards(family, row_tokens, tmp_path):
    """Full fine-tuning, 4 video pairs of 4-8 frames (one with a still image too): the packed fast path and
    trl's path with VideoPreferenceCollator both give the unpacked reference's loss and gradients."""
    from halign.align.model import load_policy

    (plain, fast), ckpt = _trainers(family, tmp_path, row_tokens=row_tokens)
    batch = fast.data_collator([dict(r) for r in fast.train_dataset])
    assert "pixel_values_videos" in batch and "pixel_values" in batch
    if family in MROPE_FAMILIES:
        assert batch["video_grid_thw"].shape[0] == len(CLIPS)
    else:  # clips of 4-8 frames laid end to end (video_processor.llava_next_video_batch)
        assert batch["pixel_values_videos"].shape[:2] == (1, sum(n for n, *_ in CLIPS))
    if row_tokens:
        assert batch["input_ids"].shape[0] < len(CLIPS)  # pairs share rows
    policy, processor = load_policy(ckpt)
    reference, _ = load_policy(ckpt)  # the checkpoint before perturbation
    policy.train()
    reference.eval()
    _perturb([plain, fast, SimpleNamespace(model=policy)])  # every policy moved off the reference identically
    examples = [dict(r) for r in fast.train_dataset]
    expected = _unpacked_loss_and_grads(policy, reference, processor, examples)
    _assert_close(expected, _loss_and_grads(fast))
    _assert_close(expected, _loss_and_grads(plain))


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava_next_video"])
def test_video_pairs_lora_fast_equals_trl(family, tmp_path):
    (plain, fast), _ = _trainers(family, tmp_path, lora=True, row_tokens=4096)
    _perturb([plain, fast])
    _assert_close(_loss_and_grads(plain), _loss_and_grads(fast))


@pytest.mark.parametrize("family", MROPE_FAMILIES)
def test_packed_video_positions_equal_the_models_own(family):
    """Video token runs in a packed row get get_rope_index's 3D positions (Qwen2.5-VL: temporal steps of
    tokens_per_second * second_per_grid_t, fps 0.5 to 4 here), beside a still image and across pairs."""
    from tiny_models import build_family

    from halign.align.packing import PackedPairCollator, mrope_merge_size
    from halign.align.packing_video import tokens_per_second

    model, processor = build_family(family)
    examples = [{"images": [Image.new("RGB", (16, 16))] if still else [], "videos": [_frames(n, size, i)],
                 "video_fps": [fps], "prompt": [{"role": "user", "content": question}],
                 "chosen": [{"role": "assistant", "content": chosen}],
                 "rejected": [{"role": "assistant", "content": rejected}]}
                for i, ((n, size, fps, still), (question, chosen, rejected)) in enumerate(zip(CLIPS, TEXTS))]
    examples[0]["video_fps"] = [0.5]  # second_per_grid_t = 4: temporal steps > 1 on Qwen2.5-VL
    batch = PackedPairCollator(processor, mrope_merge_size=mrope_merge_size(model),
                               mrope_tokens_per_second=tokens_per_second(model))(examples)
    images = iter(batch["image_grid_thw"])
    seconds = batch.get("second_per_grid_ts")
    for i, example in enumerate(examples):
        ids, positions, segments = batch["input_ids"][i], batch["position_ids"][:, i], batch["segments"][i]
        image_grid = torch.stack([next(images)]) if example["images"] else None
        extra = {} if seconds is None else {"second_per_grid_ts": seconds[i:i + 1]}

        def rope_index(tokens):
            tokens = tokens[None]
            types = (tokens == processor.image_token_id).int() + 2 * (tokens == processor.video_token_id).int()
            return model.model.get_rope_index(tokens, mm_token_type_ids=types, image_grid_thw=image_grid,
                                              video_grid_thw=batch["video_grid_thw"][i:i + 1], **extra)[0][:, 0]

        chosen, rejected = (segments == 1).nonzero()[:, 0], (segments == 2).nonzero()[:, 0]
        n, x, end = int(chosen[0]), int(chosen[-1]) + 1, int(rejected[-1]) + 1
        assert torch.equal(positions[:, :x], rope_index(ids[:x]))  # prefix | chosen
        unpacked = rope_index(torch.cat([ids[:n], ids[x + 1:end]]))  # prefix | rejected
        assert torch.equal(positions[:, x], unpacked[:, n - 1])
        assert torch.equal(positions[:, x + 1:end], unpacked[:, n:])
    if family == "qwen2_5_vl":  # the temporal step really is scaled
        first = positions_of_video(batch, processor, 0)
        assert (first[0].unique().diff() > 1).all()


def positions_of_video(batch, processor, row):
    return batch["position_ids"][:, row][:, batch["input_ids"][row] == processor.video_token_id]


def test_to_dataset_and_validate_pairs_with_videos(tmp_path):
    from halign.align.validate import validate_pairs
    from halign.data_gen.pairs import to_dataset

    dataset = to_dataset(video_pair_rows(tmp_path))  # frames by path (save_to_disk would embed their bytes)
    assert [len(clip) for row in dataset["videos"] for clip in row] == [n for n, *_ in CLIPS]
    assert dataset["video_fps"] == [[fps] for _, _, fps, _ in CLIPS]
    assert isinstance(dataset[0]["videos"][0][0], Image.Image)
    # build_pairs carries a native video prompt's clip (data_gen/sources.py, as: video) into its pair rows.
    from halign.data_gen.pairs import PairsConfig, build_pairs

    clip = [str(p) for p in sorted((tmp_path / "frames" / "clip0").iterdir())]
    prompts = {"v": {"id": "v", "question": "what is there ?", "images": [], "video": clip, "video_fps": 2.0}}
    candidates = [{"id": "c1", "prompt_id": "v", "text": "a red circle ."},
                  {"id": "c2", "prompt_id": "v", "text": "a blue star ."}]
    judgments = [{"candidate_id": "c1", "score": 2.0}, {"candidate_id": "c2", "score": 0.0}]
    (row,), _ = build_pairs(PairsConfig(strategy="best_vs_worst"), prompts, candidates, judgments)
    assert row["video_paths"] == [clip] and row["video_fps"] == [2.0] and row["image_paths"] == []
    assert [len(c) for c in to_dataset([row])[0]["videos"]] == [4]
    # Image-only pairs keep the old schema.
    plain = to_dataset([{"prompt_id": "p", "image_paths": [], "prompt": [{"role": "user", "content": "q"}],
                         "chosen": [{"role": "assistant", "content": "a"}],
                         "rejected": [{"role": "assistant", "content": "b"}], "chosen_score": 1.0,
                         "rejected_score": 0.0, "judge": "j"}])
    assert "videos" not in plain.column_names
    # A missing frame is skipped like a missing image; the length check counts video tokens.
    (tmp_path / "frames" / "clip1" / "003.png").unlink()
    processor = tiny_models.build_family("qwen2_5_vl")[1]
    # Prompts are 37, 59 (the clip with the missing frame), 65 and 26 tokens with their video tokens.
    kept, summary = validate_pairs(dataset, processor, max_length=40)
    assert summary["skipped_reasons"] == {"missing_image": 1, "prompt_too_long": 1}, summary
    assert kept["prompt_id"] == ["v0", "v3"]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "trl"])
def test_train_wiring_with_videos(tmp_path, fast):
    import json

    from halign.align.dpo import TrainConfig, train

    ckpt, pairs = tiny_models.save_family("qwen2_5_vl", tmp_path / "ckpt"), write_video_pairs(tmp_path)
    out = train(TrainConfig(model=str(ckpt), pairs=str(pairs), output_dir=str(tmp_path / "out"), fast=fast,
                            dpo={"num_train_epochs": 1, "per_device_train_batch_size": 2, "logging_steps": 1}),
                progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["trainer"] == ("FastVisionDPOTrainer" if fast else "DPOTrainer")
    assert (out / "adapter_config.json").exists()


@pytest.mark.parametrize("size", [(336, 336), (640, 360)])
def test_native_video_holds_half_the_tokens_of_frames_as_images(size):
    """Qwen2.5-VL's real settings (patch 14, merge 2, temporal patch 2): 8 frames as one clip take half the
    vision tokens (and tower patches) of the same frames as 8 images, which repeat each frame in time.
    336 x 336: 576 video tokens against 8 x 144 = 1152 image tokens."""
    from halign.align.processor import ImageOnlyVideoProcessor
    from halign.align.video_processor import process_video, video_config

    sizes = dict(patch_size=14, merge_size=2, temporal_patch_size=2,
                 size={"shortest_edge": 128 * 28 * 28, "longest_edge": 768 * 28 * 28})
    frames = _frames(8, size, seed=0)
    video = process_video(frames, video_config(ImageOnlyVideoProcessor(video_processor_type="Qwen2VLVideoProcessor",
                                                                       **sizes)))
    images = tiny_models.pil_image_processor("qwen2_vl", "Qwen2VLImageProcessorPil", **sizes)(frames, return_tensors="pt")
    image_tokens = int(images["image_grid_thw"].prod(dim=1).sum()) // 4
    assert video.num_video_tokens * 2 == image_tokens
    assert video.pixel_values_videos.shape[0] * 2 == images["pixel_values"].shape[0]
    if size == (336, 336):
        assert (video.num_video_tokens, image_tokens) == (576, 1152)



def test_reference_cache_key_covers_video_frames(tmp_path):
    """The fast path's reference log-prob cache key (align/ref_cache.py) hashes every frame's bytes."""
    from halign.align.ref_cache import dataset_part
    from halign.data_gen.pairs import to_dataset

    dataset = to_dataset(video_pair_rows(tmp_path))  # frames by path: read as the files are now
    first = dataset_part(dataset)
    assert "videos" in first["columns"] and dataset_part(dataset) == first  # stable: no object addresses
    _frames(1, (32, 32), seed=99)[0].save(tmp_path / "frames" / "clip2" / "001.png")
    assert dataset_part(dataset) != first
