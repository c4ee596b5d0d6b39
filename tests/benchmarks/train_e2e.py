"""`halign train` end to end, fast vision DPO vs `--no-fast` (plain trl.DPOTrainer), at LLaVA-1.5 proportions.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 \\
        python tests/benchmarks/train_e2e.py [--runs 2] [--modes lora,full] [--checkpointing on,off]

The checkpoint is built from config classes with LLaVA-1.5's proportions where they drive the cost: CLIP at
336 px with 14 px patches (576 image tokens per image), a 32,000-token vocabulary, a Llama decoder at hidden
768 (2 layers, 12 heads: small enough for a CPU) and a small vision tower. 24 pairs: random 336 px images, a
short question, chosen and rejected answers of 80-150 tokens each, of different lengths.

Each run is a fresh `halign train` process (model load, pair validation, the reference pass or trl's
on-the-fly reference forwards, the steps, the save), 1 epoch, 8 pairs per step, a fresh output folder (a
cold reference cache). Runs are interleaved (fast, trl, then trl, fast on the next repetition ...) and the
median of --runs is reported per (mode, activation checkpointing).

Memory: the process's peak RSS (ru_maxrss, whole process: libraries, every model the trainer holds, the
accelerator's too, activations, optimizer state). The glibc settings above keep freed memory in the process
instead of returning it to the system after each step; without them page faults dominate trl's step time on
these machines and the ratio measures the allocator (the script warns when they are unset).

"steps only": the trainer's own train_runtime (the training loop, without start-up, load, reference pass
and save), as a second ratio.

Losses: every logged step's loss (logging_steps=1), fast vs trl: step 1 and the largest difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ALLOCATOR = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
VOCAB = 32_000

# One `halign train` run in a child process; prints its own peak RSS (ru_maxrss is in KiB on Linux).
CHILD = ("import resource, sys\nfrom halign.recipes.cli import main\nrc = main(sys.argv[1:])\n"
         "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")


def build_checkpoint(folder: Path) -> Path:
    import torch
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    from tiny_models import PUNCT, USER_ASSISTANT, WORDS, build_tokenizer, chat_template, pil_image_processor

    torch.manual_seed(0)
    template = chat_template(*USER_ASSISTANT, image="<image> ")
    specials = ["<image>", "USER:", "ASSISTANT:"]
    fillers = [f"w{i}" for i in range(VOCAB - 4 - len(specials) - len(set(PUNCT + WORDS)))]
    tok = build_tokenizer(specials, template, extra_special_tokens={"image_token": "<image>"}, extra_tokens=fillers)
    tok.model_max_length = 2048
    size = {"height": 336, "width": 336}
    ip = pil_image_processor("clip", "CLIPImageProcessorPil", size=size, crop_size=size, do_center_crop=False)
    processor = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    vision = CLIPVisionConfig(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                              image_size=336, patch_size=14, projection_dim=128)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=768, intermediate_size=2048, num_hidden_layers=2,
                       num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=2048,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.convert_tokens_to_ids("<image>"),
                         vision_feature_layer=-1, vision_feature_select_strategy="default", image_seq_length=576)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_pairs(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    from halign.data_gen.pairs import to_dataset

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = folder / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 255, (336, 336, 3), dtype=np.uint8)).save(path)

        def answer() -> str:
            return " ".join(f"w{j}" for j in rng.integers(0, 30_000, int(rng.integers(80, 151)))) + " ."

        rows.append({"image_paths": [str(path)], "prompt": [{"role": "user", "content": "describe the image ."}],
                     "chosen": [{"role": "assistant", "content": answer()}],
                     "rejected": [{"role": "assistant", "content": answer()}],
                     "chosen_score": 1.0, "rejected_score": 0.0, "judge": "bench", "prompt_id": f"p{i}"})
    to_dataset(rows).save_to_disk(str(folder / "pairs"))
    return folder / "pairs"


def run_train(checkpoint: Path, pairs: Path, out: Path, fast: bool, mode: str, checkpointing: bool,
              batch: int, threads: int) -> dict:
    argv = ["train", "--model", str(checkpoint), "--pairs", str(pairs), "--out", str(out),
            "dpo.num_train_epochs=1", f"dpo.per_device_train_batch_size={batch}", "dpo.logging_steps=1",
            f"dpo.activation_checkpointing={str(checkpointing).lower()}", "dpo.learning_rate=1e-4"]
    argv += ["--full"] if mode == "full" else []
    argv += [] if fast else ["--no-fast"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"halign train failed ({'fast' if fast else 'trl'}, {mode}):\n{done.stderr[-3000:]}")
    peak = next(int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_RSS_KIB"))
    log = json.loads((out / "train_log.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    expected = "FastVisionDPOTrainer" if fast else "DPOTrainer"
    if manifest["trainer"] != expected:
        raise RuntimeError(f"expected {expected}, the run used {manifest['trainer']}")
    return {"seconds": seconds, "steps_seconds": manifest["train_runtime"], "peak": peak * 1024,
            "losses": [h["loss"] for h in log if "loss" in h]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="repetitions per configuration (median reported)")
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--checkpointing", default="on,off", help="activation checkpointing settings to run")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each training process")
    args = parser.parse_args()
    unset = [k for k, v in ALLOCATOR.items() if os.environ.get(k) != v]
    if unset:
        print(f"warning: {', '.join(unset)} not set as recommended ({ALLOCATOR}): glibc returning freed memory to "
              "the system can make page faults dominate trl's step time", file=sys.stderr)
    configs = [(mode, setting == "on") for mode in args.modes.split(",") for setting in args.checkpointing.split(",")]
    results = {(mode, ckpt, side): [] for mode, ckpt in configs for side in ("fast", "trl")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = build_checkpoint(tmp / "checkpoint")
        pairs = build_pairs(tmp, args.pairs)
        print(f"checkpoint: 576 image tokens, vocabulary {VOCAB}, decoder 2 x 768; {args.pairs} pairs, answers "
              f"80-150 tokens; {args.batch} pairs per step, 1 epoch; OMP_NUM_THREADS={args.threads}", flush=True)
        count = 0
        for run in range(args.runs):
            for mode, ckpt in configs:
                sides = ("fast", "trl") if (run + count) % 2 == 0 else ("trl", "fast")
                count += 1
                for side in sides:
                    out = tmp / "runs" / f"{mode}-{ckpt}-{side}-{run}"
                    result = run_train(checkpoint, pairs, out, side == "fast", mode, ckpt, args.batch, args.threads)
                    results[(mode, ckpt, side)].append(result)
                    print(f"run {run + 1}/{args.runs} {mode:4s} checkpointing={'on ' if ckpt else 'off'} {side:4s}: "
                          f"{result['seconds']:6.1f} s (steps {result['steps_seconds']:6.1f} s), "
                          f"peak RSS {result['peak'] / 2**20:6.0f} MiB, "
                          f"step-1 loss {result['losses'][0]:.6f}", flush=True)
    print(f"\nfast / trl, `halign train` end to end (median of {args.runs}; targets: wall <= 0.6, peak RSS <= 0.8)")
    print(f"  {'mode':4s}  {'checkpointing':13s}  {'wall s fast/trl':>16s}  {'wall':>5s}  {'peak MiB fast/trl':>18s}  "
          f"{'peak':>5s}  {'steps only':>10s}  {'step-1 |diff|':>13s}  {'all steps max |diff|':>20s}")
    for mode, ckpt in configs:
        fast, trl = results[(mode, ckpt, "fast")], results[(mode, ckpt, "trl")]
        wall = [statistics.median(r["seconds"] for r in side) for side in (fast, trl)]
        peak = [statistics.median(r["peak"] for r in side) / 2**20 for side in (fast, trl)]
        steps = [statistics.median(r["steps_seconds"] for r in side) for side in (fast, trl)]
        first = max(abs(a["losses"][0] - b["losses"][0]) for a, b in zip(fast, trl, strict=True))
        every = max(abs(x - y) for a, b in zip(fast, trl, strict=True) for x, y in zip(a["losses"], b["losses"],
                                                                                        strict=True))
        print(f"  {mode:4s}  {'on' if ckpt else 'off':13s}  {wall[0]:7.1f}/{wall[1]:<8.1f}  {wall[0] / wall[1]:5.2f}  "
              f"{peak[0]:8.0f}/{peak[1]:<9.0f}  {peak[0] / peak[1]:5.2f}  {steps[0] / steps[1]:10.2f}  {first:13.1e}  "
              f"{every:20.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
