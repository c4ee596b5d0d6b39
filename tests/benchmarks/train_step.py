"""Fast vision DPO (align/fast_dpo.py) vs plain trl.DPOTrainer: time and peak memory per training step.

    python tests/benchmarks/train_step.py [--pairs 4] [--runs 3] [--modes lora,full] [--family llava|qwen2_vl]
                                          [--mixed-lengths] [--row-tokens N]

A small LLaVA built from config classes (CLIP 224 px / 28 px patches -> 64 image tokens, 4 x 256 vision layers;
Llama decoder 512 hidden, 4 layers, 8000-token vocabulary; ~27M parameters), saved to a temporary folder so
both trainers load the reference the same way. `--family qwen2_vl`: the same proportions in Qwen2-VL's
architecture (14 px patches merged 2x2 -> 64 image tokens, 3D rope positions; the packed row's positions are
computed by halign's collator). Pairs: random 224 px images, a short question, answers of about
14 tokens (image tokens ~4.5x the answer tokens). Same pairs, same seed, activation checkpointing off on both
sides, one batch of all pairs per step. `--mixed-lengths`: answers of 3 to 12 objects (about 10 to 60 tokens),
so one-pair-per-row batches carry padding; `--row-tokens N` adds a third side, the fast path with several pairs
per row (align/packing.py, padding-free), measured in the same interleaved run.

A step is zero_grad(set_to_none) + trainer.training_step (forward + backward) + AdamW step. Steps are interleaved
(ours, trl, trl, ours, ...) after one untimed warm-up step each, and the median of --runs is reported.

Memory (CPU): peak = bytes held before the step (parameters and buffers of every model the trainer keeps,
through its accelerator too, the reference copy included, plus optimizer state) + the step's peak RSS
increase (Linux VmHWM, reset through /proc/self/clear_refs after malloc_trim, minus VmRSS at the step's start). On CUDA the same held bytes +
torch.cuda.max_memory_allocated increase are used. The ratios are printed last.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_checkpoint(folder: Path) -> Path:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from tiny_models import USER_ASSISTANT, build_tokenizer, chat_template, pil_image_processor

    torch.manual_seed(0)
    template = chat_template(*USER_ASSISTANT, image="<image> ")
    tok = build_tokenizer(["<image>", "USER:", "ASSISTANT:"], template, extra_special_tokens={"image_token": "<image>"})
    size = {"height": 224, "width": 224}
    ip = pil_image_processor("clip", "CLIPImageProcessorPil", size=size, crop_size=size, do_center_crop=False)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=28, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    vision = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                              image_size=224, patch_size=28, projection_dim=256)
    text = LlamaConfig(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=64)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_qwen2_vl_checkpoint(folder: Path) -> Path:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    from tiny_models import QWEN_SPECIALS, QWEN_TEMPLATE, build_tokenizer, make_processor, pil_image_processor, video_processor

    torch.manual_seed(0)
    tok = build_tokenizer(QWEN_SPECIALS, QWEN_TEMPLATE, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>")
    # 224 px -> 16 x 16 patches of 14 px, merged 2 x 2 -> 64 image tokens, as the LLaVA variant has.
    sizes = dict(patch_size=14, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 224 * 224, "longest_edge": 224 * 224})
    processor = make_processor(Qwen2VLProcessor, image_processor=pil_image_processor("qwen2_vl", "Qwen2VLImageProcessorPil", **sizes),
                               tokenizer=tok, video_processor=video_processor("Qwen2VLVideoProcessor", **sizes),
                               chat_template=QWEN_TEMPLATE)
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in [
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")]}
    text = dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=8, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]})
    vision = dict(depth=4, embed_dim=256, hidden_size=512, num_heads=4, mlp_ratio=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **ids))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"llava": build_checkpoint, "qwen2_vl": build_qwen2_vl_checkpoint}


def build_pairs(folder: Path, n: int, mixed: bool = False) -> Path:
    import numpy as np
    from PIL import Image

    from halign.data_gen.pairs import to_dataset

    rng = np.random.default_rng(0)
    colours, shapes = ["red", "blue", "green"], ["circle", "square", "triangle", "star"]
    rows = []
    for i in range(n):
        path = folder / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(path)
        count = 3 + (i * 7) % 10 if mixed else 3  # mixed: 3 to 12 objects, spread over the pairs
        objects = [f"a {colours[(i + k) % 3]} {shapes[(i + 2 * k) % 4]}" for k in range(count)]
        chosen = ", ".join(objects) + " ."
        rejected = ", ".join(objects[:-1]) + f" and a {colours[i % 3]} star ."
        rows.append({"image_paths": [str(path)], "prompt": [{"role": "user", "content": "describe the image ."}],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "chosen_score": 1.0, "rejected_score": 0.0, "judge": "bench", "prompt_id": f"p{i}"})
    to_dataset(rows).save_to_disk(str(folder / "pairs"))
    return folder / "pairs"


def make_trainer(checkpoint: Path, pairs: Path, out: Path, fast: bool, lora: bool, n: int, row_tokens: int | None = None):
    import datasets
    from trl import DPOTrainer

    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    cfg = TrainConfig(model=str(checkpoint), pairs=str(pairs), output_dir=str(out), peft={} if lora else None,
                      dpo={"per_device_train_batch_size": n, "gradient_checkpointing": False})
    args = make_dpo_config(cfg, out / ("fast" if fast else "trl"))
    args.disable_tqdm = True
    dataset = datasets.load_from_disk(str(pairs)).select_columns(["images", "prompt", "chosen", "rejected", "prompt_id"])
    model, processor = load_policy(checkpoint)
    model.train()
    kwargs = dict(model=model, args=args, train_dataset=dataset, processing_class=processor,
                  peft_config=make_lora_config(cfg))
    trainer = FastVisionDPOTrainer(**kwargs, row_tokens=row_tokens) if fast else DPOTrainer(**kwargs)
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which training_step runs outside of
    return trainer, batch, optimizer


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def held_bytes(trainer, optimizer) -> int:
    """Bytes of every model the trainer holds (its policy, its ref_model, and whatever its accelerator still
    keeps prepared: trl's reference copy lives there too) plus optimizer state, each tensor counted once."""
    models = [trainer.model, trainer.ref_model, *trainer.accelerator._models]
    tensors = {id(t): t for m in models if m is not None for t in [*m.parameters(), *m.buffers()]}
    tensors.update({id(v): v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)})
    return sum(t.numel() * t.element_size() for t in tensors.values())


def step(trainer, batch, optimizer) -> tuple[float, int, float]:
    """(seconds, peak bytes, loss) of one training step."""
    trainer.model.zero_grad(set_to_none=True)
    held = held_bytes(trainer, optimizer)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status("VmRSS")
    start = time.perf_counter()
    loss = trainer.training_step(trainer.model, batch)
    optimizer.step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")) - base
    return seconds, held + peak, float(loss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4, help="pairs per batch (one batch per step)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--family", default="llava", choices=sorted(BUILDERS))
    parser.add_argument("--mixed-lengths", action="store_true", help="answers of 3 to 12 objects instead of 3")
    parser.add_argument("--row-tokens", type=int, default=None, help="also time the fast path with several pairs per row")
    args = parser.parse_args()
    torch.manual_seed(0)
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = BUILDERS[args.family](tmp / "checkpoint")
        pairs = build_pairs(tmp, args.pairs, mixed=args.mixed_lengths)
        for mode in args.modes.split(","):
            lora = mode == "lora"
            sides, builds = {}, {}
            plan = [("trl", False, None), ("ours", True, None)]
            if args.row_tokens:
                plan.append(("ours, pairs per row", True, args.row_tokens))
            for name, fast, row_tokens in plan:
                started = time.perf_counter()
                sides[name] = make_trainer(checkpoint, pairs, tmp / f"{name.replace(', ', '_').replace(' ', '_')}_{mode}",
                                           fast=fast, lora=lora, n=args.pairs, row_tokens=row_tokens)
                builds[name] = time.perf_counter() - started
            ours = sides["ours"]
            model = ours[0].model
            total = sum(p.numel() for p in model.parameters())
            image_tokens = int((ours[1]["input_ids"] == model.config.image_token_id).sum()) // args.pairs
            answer = int((ours[1]["segments"] > 0).sum()) / (2 * args.pairs)
            rows = ", ".join(f"{name} {tuple(side[1]['input_ids'].shape)}" for name, side in sides.items())
            print(f"[{mode}] {total / 1e6:.1f}M parameters, {image_tokens} image tokens, {answer:.1f} answer tokens "
                  f"per side (mean); rows: {rows}; activation checkpointing trl="
                  f"{sides['trl'][0].model.is_gradient_checkpointing} ours={ours[0].model.is_gradient_checkpointing}; "
                  f"build s: " + ", ".join(f"{k} {v:.1f}" for k, v in builds.items()) + " (reference pass included)")
            times = {name: [] for name in sides}
            peaks = {name: [] for name in sides}
            first = {name: step(*side)[2] for name, side in sides.items()}  # warm-up = step 1
            print(f"[{mode}] loss at step 1: " + "  ".join(f"{k} {v:.7f}" for k, v in first.items()))
            names = list(sides)
            for run in range(args.runs):
                order = names if run % 2 == 0 else names[::-1]  # interleaved: no side always runs first
                for name in order:
                    seconds, peak, _ = step(*sides[name])
                    times[name].append(seconds)
                    peaks[name].append(peak)
            med = {k: (statistics.median(times[k]), statistics.median(peaks[k])) for k in times}
            for k, (sec, peak) in med.items():
                print(f"[{mode}] {k}: {sec:.3f} s/step (runs {', '.join(f'{t:.2f}' for t in times[k])}), "
                      f"peak {peak / 2**20:.0f} MiB")
            for name in names[1:]:
                summary.append((mode, name, med[name][0] / med["trl"][0], med[name][1] / med["trl"][1],
                                abs(first[name] - first["trl"])))
            del sides, ours
    kind = "CUDA max_memory_allocated" if torch.cuda.is_available() else "CPU held tensors + step peak RSS"
    print(f"\n{args.family}, {args.pairs} pairs{', mixed lengths' if args.mixed_lengths else ''}: ratios to trl "
          f"(median of {args.runs}; memory: {kind}; targets time <= 0.6, memory <= 0.8)")
    for mode, name, t, m, d in summary:
        print(f"  {mode:4s}  {name:20s} time {t:.2f}   peak memory {m:.2f}   step-1 loss |diff| {d:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
