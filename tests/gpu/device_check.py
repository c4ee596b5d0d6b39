"""The prepared GPU check of the fast DPO path: one run, one JSON + markdown summary (run via device_check.sh).

    python tests/gpu/device_check.py --out DIR [--smoke] [--budget-s 420]

Checks, each isolated (an error is recorded with its traceback and the next check runs):
  agreement/<family>/<attention>  bf16 loss and gradients, fast vs trl, 2 pairs, LoRA, policies perturbed off
                                  the reference identically (LLaVA at LLaVA-1.5-7B widths, Qwen2.5-VL at 7B widths,
                                  2 decoder + 2 vision layers, 576 image tokens: 336 px CLIP / 672 px Qwen)
  timing/<family>/<side>          seconds per step (median) and peak CUDA memory, trl (sdpa) vs fast (sdpa) vs fast
                                  (flex; LLaVA only: transformers has no flex for Qwen2.5-VL), each also with several
                                  pairs per row (row_tokens 4096), 8 pairs, 100-200-token answers, LoRA; one trainer
                                  alive at a time (agreement is checked with pairs per row too)
  zero2 / zero3                   2 training steps through `halign train --accelerate-config zeroN` on the fast
                                  path (the manifest's trainer and ZeRO stage are recorded), if deepspeed imports
  qlora                           one QLoRA DPO step (halign.align.dpo.train, quantization=True), if bitsandbytes imports
  video_processor                 halign's torchvision-free video inputs equal transformers' video processors
                                  (Qwen2-VL and LLaVA-NeXT-Video at released settings), if torchvision imports
                                  (tests/gpu/video_check.py)

--smoke runs the same code on CPU at tiny sizes in seconds (tests/test_device_check.py), so the script cannot rot
between GPU runs. No number here is written by hand: everything in the summary is measured by this run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "benchmarks")]
from video_check import check_video_processor  # noqa: E402  (tests/gpu/, the script's own folder; needs tests/)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Real widths, tiny depth: the lm head, embeddings and attention shapes of the 7B models, 2 layers of each stack.
FULL = {
    "llava": dict(text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                            num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096),
                  vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=2, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768),
                  image=336, patch=14, image_tokens=576),
    "qwen2_5_vl": dict(text=dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=2, num_attention_heads=28,
                                 num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768),
                       mrope_section=[16, 24, 24],
                       vision=dict(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                                   patch_size=14, window_size=112, fullatt_block_indexes=[1]),
                       image=672, patch=14, image_tokens=576),
}
# --smoke: the tests' tiny checkpoints as they are (tests/tiny_models.py), same code path.
SMOKE = {"llava": dict(text={}, vision={}, image=32, patch=8, image_tokens=16),
         "qwen2_5_vl": dict(text={}, vision={}, image=32, patch=4, image_tokens=16)}
FLEX_FAMILIES = {"llava"}  # transformers 5.24 has no flex_attention for Qwen2.5-VL


def sized(family: str, size: dict):
    """(model class, config, processor): the tiny test checkpoint of `family` with its widths, image size and
    vocabulary set to `size`."""
    import tiny_models

    small, processor = tiny_models.build_family(family)
    config = small.config
    # Rebuilt from their dicts, not edited in place: head_dim and layer_types are derived when a config is made.
    for part in ("text", "vision"):
        old = getattr(config, f"{part}_config")
        values = {k: v for k, v in old.to_dict().items() if k not in ("head_dim", "layer_types")} | size[part]
        if part == "text" and "mrope_section" in size:
            values["rope_parameters"] = {**values["rope_parameters"], "mrope_section": size["mrope_section"]}
        setattr(config, f"{part}_config", type(old)(**values))
    processor.tokenizer.model_max_length = 4096  # rows are ~900 tokens at full size (576 image tokens)
    ip, side = processor.image_processor, size["image"]
    if family == "llava":
        ip.size = ip.crop_size = {"height": side, "width": side}
        processor.patch_size = size["patch"]
        config.image_seq_length = processor.num_image_tokens = size["image_tokens"]
    else:  # Qwen: dynamic resolution, bounded so that a side x side image keeps its size
        ip.patch_size = size["patch"]
        ip.size = {"shortest_edge": side * side, "longest_edge": side * side}
    return type(small), config, processor


def write_checkpoint(family: str, size: dict, folder: Path, device: str) -> Path:
    cls, config, processor = sized(family, size)
    with torch.device(device):  # on the GPU: random init of ~1B parameters takes seconds there, minutes on CPU
        model = cls(config)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder


def write_pairs(folder: Path, n: int, image: int, answer_tokens: tuple[int, int], seed: int = 0) -> Path:
    """n pairs over random images; answers are random words of the tiny vocabulary (one token each)."""
    import numpy as np
    from PIL import Image

    from halign.data_gen.pairs import to_dataset
    from tiny_models import WORDS

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        path = folder / f"image_{i}.png"
        Image.fromarray(rng.integers(0, 255, (image, image, 3), dtype=np.uint8)).save(path)
        answers = [" ".join(rng.choice(WORDS[:-4], int(rng.integers(*answer_tokens)))) + " ." for _ in range(2)]
        rows.append({"image_paths": [str(path)], "prompt": [{"role": "user", "content": "describe the image ."}],
                     "chosen": [{"role": "assistant", "content": answers[0]}],
                     "rejected": [{"role": "assistant", "content": answers[1]}],
                     "chosen_score": 1.0, "rejected_score": 0.0, "judge": "device_check", "prompt_id": f"p{i}"})
    to_dataset(rows).save_to_disk(str(folder / "pairs"))
    return folder / "pairs"


def make_trainer(checkpoint: Path, pairs: Path, out: Path, fast: bool, attention: str, dtype: str, n: int,
                 row_tokens: int | None = None):
    """(trainer, one batch of all n pairs on the trainer's device, AdamW over the trainable parameters), LoRA."""
    import datasets
    from trl import DPOTrainer

    from halign.align.collator import make_data_collator
    from halign.align.dpo import TrainConfig, make_dpo_config, make_lora_config
    from halign.align.fast_dpo import FastVisionDPOTrainer
    from halign.align.model import load_policy

    cfg = TrainConfig(model=str(checkpoint), pairs=str(pairs), output_dir=str(out), peft={}, dtype=dtype,
                      dpo={"per_device_train_batch_size": n, "gradient_checkpointing": False})
    args = make_dpo_config(cfg, out)
    args.disable_tqdm = True
    columns = ["images", "prompt", "chosen", "rejected"] + (["prompt_id"] if fast else [])
    dataset = datasets.load_from_disk(str(pairs)).select(range(n)).select_columns(columns)
    model, processor = load_policy(checkpoint, dtype=dtype)
    model.set_attn_implementation(attention)
    model.train()
    kwargs = dict(model=model, args=args, train_dataset=dataset, processing_class=processor,
                  peft_config=make_lora_config(cfg))
    trainer = (FastVisionDPOTrainer(**kwargs, ref_cache_dir=out / "cache", row_tokens=row_tokens) if fast
               else DPOTrainer(**kwargs, data_collator=make_data_collator(processor, args)))
    batch = trainer._prepare_inputs(trainer.data_collator([dict(r) for r in trainer.train_dataset]))
    optimizer = torch.optim.AdamW([p for p in trainer.model.parameters() if p.requires_grad], lr=1e-5)
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, which training_step runs outside of
    return trainer, batch, optimizer


def perturb(model, seed: int = 1, scale: float = 0.02) -> None:
    """Move the trainable weights (LoRA) off the reference, the same way on both sides: non-trivial log-ratios."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in sorted(model.named_parameters()):
            if param.requires_grad:
                param.add_((torch.randn(param.shape, generator=generator) * scale).to(param))


def loss_and_grads(trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.float().cpu() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss), grads


def release(*objects) -> None:
    del objects
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def check_agreement(ctx, family: str, attention: str, packed: bool = False) -> dict:
    found = {}
    for fast in (False, True):
        trainer, batch, _ = make_trainer(ctx["ckpt"][family], ctx["pairs"][family],
                                         ctx["tmp"] / f"agree_{family}_{attention}_{fast}_{packed}",
                                         fast=fast, attention=attention if fast else "sdpa", dtype=ctx["dtype"], n=2,
                                         row_tokens=ctx["row_tokens"] if fast and packed else None)
        if fast and packed:
            assert batch["input_ids"].shape[0] == 1, f"2 pairs did not share a row: {tuple(batch['input_ids'].shape)}"
        perturb(trainer.model)
        found[fast] = loss_and_grads(trainer, batch)
        release(trainer, batch)
    (trl_loss, trl_grads), (fast_loss, fast_grads) = found[False], found[True]
    assert trl_grads.keys() == fast_grads.keys(), "the two sides train different parameters"
    errors = {n: float((fast_grads[n] - g).norm() / g.norm().clamp(min=1e-12)) for n, g in trl_grads.items()}
    worst = max(errors, key=errors.get)
    tol = ctx["tolerance"]
    return {"trl_loss": trl_loss, "fast_loss": fast_loss, "loss_abs_diff": abs(fast_loss - trl_loss),
            "grad_rel_err_max": errors[worst], "grad_rel_err_median": statistics.median(errors.values()),
            "worst_param": worst, "params": len(errors), "tolerance": tol,
            "ok": abs(fast_loss - trl_loss) <= tol["loss"] and errors[worst] <= tol["grad_rel"]}


def check_timing(ctx, family: str, side: str) -> dict:
    from train_step import step

    fast, attention = side != "trl (sdpa)", "flex_attention" if "flex" in side else "sdpa"
    n = ctx["batch"]
    started = time.perf_counter()
    trainer, batch, optimizer = make_trainer(ctx["ckpt"][family], ctx["pairs"][family],
                                             ctx["tmp"] / f"time_{family}_{side.replace(' ', '_').replace(',', '')}",
                                             fast=fast, attention=attention, dtype=ctx["dtype"], n=n,
                                             row_tokens=ctx["row_tokens"] if "pairs per row" in side else None)
    build = time.perf_counter() - started
    warm = step(trainer, batch, optimizer)  # includes torch.compile of flex attention on its first call
    runs = [step(trainer, batch, optimizer) for _ in range(ctx["runs"])]
    shape = tuple(batch["input_ids"].shape)
    release(trainer, batch, optimizer)
    return {"seconds_per_step": statistics.median(r[0] for r in runs), "peak_mib": statistics.median(r[1] for r in runs) / 2**20,
            "warmup_s": warm[0], "build_s": build, "loss": runs[-1][2], "rows": shape, "pairs": n,
            "peak_kind": "held tensors + torch.cuda.max_memory_allocated increase" if torch.cuda.is_available()
            else "held tensors + step peak RSS increase (CPU)"}


def run_subprocess(argv: list[str], timeout: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    tail = (done.stdout + done.stderr)[-3000:]
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {tail}")
    return {"seconds": time.perf_counter() - started, "output_tail": tail[-600:]}


def check_zero(ctx, stage: str) -> dict:
    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed does not import here (carry its wheel in shared/wheels or tests/gpu/wheels)"}
    if not torch.cuda.is_available():
        return {"skipped": "the ZeRO configs are launched on CUDA GPUs only"}
    out = ctx["tmp"] / f"zero_{stage}"
    code = ("import sys; from halign.recipes.cli import main; sys.exit(main(sys.argv[1:]))")
    argv = [sys.executable, "-c", code, "train", "--model", str(ctx["ckpt"]["llava"]), "--pairs", str(ctx["pairs"]["llava"]),
            "--out", str(out), "--accelerate-config", stage, "--num-processes", "1", "dpo.max_steps=2",
            "dpo.per_device_train_batch_size=2", "dpo.logging_steps=1", "dpo.bf16=true"]
    result = run_subprocess(argv, timeout=ctx["subprocess_timeout"]())
    manifest = json.loads((out / "manifest.json").read_text())
    return {**result, "steps": manifest.get("steps"), "mode": manifest.get("mode"), "trainer": manifest.get("trainer"),
            "zero_stage": manifest.get("zero_stage")}


def check_qlora(ctx) -> dict:
    if importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "bitsandbytes does not import here (carry its wheel in shared/wheels or tests/gpu/wheels)"}
    if not torch.cuda.is_available():
        return {"skipped": "QLoRA (4-bit bitsandbytes) needs a CUDA GPU"}
    code = ("import json, sys; from halign.align.dpo import TrainConfig, train; "
            "out = train(TrainConfig(model=sys.argv[1], pairs=sys.argv[2], output_dir=sys.argv[3], quantization=True, "
            "dpo={'max_steps': 1, 'per_device_train_batch_size': 2}), progress=False); "
            "print(json.dumps(json.loads((out / 'manifest.json').read_text())['steps']))")
    result = run_subprocess([sys.executable, "-c", code, str(ctx["ckpt"]["llava"]), str(ctx["pairs"]["llava"]),
                             str(ctx["tmp"] / "qlora")], timeout=ctx["subprocess_timeout"]())
    return result


def plan(ctx) -> list[tuple[str, callable]]:
    checks = []
    for family in ctx["families"]:
        for attention in ["sdpa"] + (["flex_attention"] if family in FLEX_FAMILIES else []):
            checks.append((f"agreement/{family}/{attention}", lambda f=family, a=attention: check_agreement(ctx, f, a)))
            checks.append((f"agreement/{family}/{attention}, pairs per row",
                           lambda f=family, a=attention: check_agreement(ctx, f, a, packed=True)))
    for family in ctx["families"]:
        flex = ["fast (flex)", "fast (flex, pairs per row)"] if family in FLEX_FAMILIES else []
        for side in ["trl (sdpa)", "fast (sdpa)", "fast (sdpa, pairs per row)"] + flex:
            checks.append((f"timing/{family}/{side}", lambda f=family, s=side: check_timing(ctx, f, s)))
    checks += [("zero2", lambda: check_zero(ctx, "zero2")), ("zero3", lambda: check_zero(ctx, "zero3")),
               ("qlora", lambda: check_qlora(ctx)), ("video_processor", lambda: check_video_processor(ctx["smoke"]))]
    return checks


def environment() -> dict:
    import transformers
    import trl

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "trl": trl.__version__, "cuda": torch.version.cuda, "host": platform.node()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), gpus=torch.cuda.device_count())
    for name in ("peft", "deepspeed", "bitsandbytes", "accelerate"):
        try:
            env[name] = __import__(name).__version__
        except Exception as err:  # recorded, not fatal: the checks that need it say skipped
            env[name] = f"unavailable ({type(err).__name__}: {err})"[:200]
    return env


def markdown(summary: dict) -> str:
    lines = [f"# Fast DPO device check ({summary['mode']}, {summary['date']})", "",
             f"Machine: {summary['environment'].get('gpu', 'CPU')}; torch {summary['environment']['torch']}, "
             f"transformers {summary['environment']['transformers']}, trl {summary['environment']['trl']}; "
             f"total {summary['seconds']:.0f} s.", "", "| check | status | result |", "|---|---|---|"]
    for name, record in summary["checks"].items():
        if "error" in record:
            status, text = "error", record["error"].splitlines()[-1][:200] if record["error"] else ""
        elif "skipped" in record:
            status, text = "skipped", record["skipped"]
        elif name.startswith("agreement"):
            status = "ok" if record["ok"] else "OUT OF TOLERANCE"
            text = (f"loss trl {record['trl_loss']:.5f} fast {record['fast_loss']:.5f} (|diff| {record['loss_abs_diff']:.1e}); "
                    f"grad rel err max {record['grad_rel_err_max']:.1e} ({record['worst_param']}), median "
                    f"{record['grad_rel_err_median']:.1e}")
        elif name == "video_processor":
            status = "ok" if record["ok"] else "DIFFERENT"
            text = (f"{len(record['clips'])} clips, max abs difference {record['max_abs_diff']:.3g} "
                    f"(torchvision {record['torchvision']})")
        elif name.startswith("timing"):
            status = "ok"
            text = (f"{record['seconds_per_step']:.3f} s/step, peak {record['peak_mib']:.0f} MiB, rows {record['rows']}, "
                    f"warm-up {record['warmup_s']:.1f} s")
        else:
            status, text = "ok", f"{record.get('seconds', 0):.0f} s"
        lines.append(f"| {name} | {status} | {text} |")
    for family, ratios in summary["ratios"].items():
        for side, (t, m) in ratios.items():
            lines.append(f"\n{family}: {side} / trl (sdpa): time {t:.2f}x, peak memory {m:.2f}x")
    return "\n".join(lines) + "\n"


def ratios(checks: dict) -> dict:
    found = {}
    for name, record in checks.items():
        parts = name.split("/")
        base = checks.get(f"timing/{parts[1]}/trl (sdpa)", {}) if parts[0] == "timing" else {}
        if parts[0] == "timing" and parts[2] != "trl (sdpa)" and "seconds_per_step" in record and "seconds_per_step" in base:
            found.setdefault(parts[1], {})[parts[2]] = (record["seconds_per_step"] / base["seconds_per_step"],
                                                        record["peak_mib"] / base["peak_mib"])
    return found


def write_summary(out: Path, args, device: str, sizes: dict, checks: dict, started: float) -> dict:
    summary = {"mode": "smoke (CPU, tiny sizes)" if args.smoke else f"full ({device})",
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": time.perf_counter() - started,
               "environment": environment(), "sizes": sizes, "checks": checks, "ratios": ratios(checks)}
    (out / "device_check.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "device_check.md").write_text(markdown(summary))
    return summary


def main(argv=None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "device_check_out"))
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes: the same code path in seconds")
    parser.add_argument("--budget-s", type=float, default=420.0, help="checks not started by then are skipped")
    parser.add_argument("--only", default="", help="comma-separated name prefixes of the checks to run")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    cuda = torch.cuda.is_available() and not args.smoke
    device = "cuda" if cuda else "cpu"
    sizes = SMOKE if args.smoke else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checks: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ctx = {"tmp": tmp, "smoke": args.smoke, "dtype": "bfloat16" if cuda else "float32", "families": list(sizes),
               "batch": 2 if args.smoke else 8, "runs": 1 if args.smoke else 3, "ckpt": {}, "pairs": {},
               # Several pairs per row: room for about 4 pairs of 576 image tokens and two 100-200-token answers.
               "row_tokens": 512 if args.smoke else 4096,
               # bf16: both sides round differently (two rows vs one packed row), so agreement is to bf16 precision.
               "tolerance": {"loss": 2e-2, "grad_rel": 0.1} if cuda else {"loss": 1e-4, "grad_rel": 1e-3}}
        answers = (5, 10) if args.smoke else (100, 200)
        for family, size in sizes.items():
            try:
                folder = tmp / family
                folder.mkdir()
                ctx["ckpt"][family] = write_checkpoint(family, size, folder / "checkpoint", device)
                ctx["pairs"][family] = write_pairs(folder, ctx["batch"], size["image"], answers)
            except Exception:
                checks[f"build/{family}"] = {"error": traceback.format_exc()}
                ctx["families"].remove(family)
        # A launched training may take at most what is left of the budget (and 150 s): the summary must be written
        # before device_check.sh's 8-minute cap.
        ctx["subprocess_timeout"] = lambda: int(max(10, min(150, args.budget_s - (time.perf_counter() - started))))
        for name, run in plan(ctx):
            if args.only and not any(name.startswith(p) for p in args.only.split(",")):
                continue
            if "flex" in name and not cuda:
                checks[name] = {"skipped": f"FlexAttention has no backward on CPU (torch {torch.__version__}: "
                                           "'FlexAttention does not support backward on CPU')"}
                continue
            if time.perf_counter() - started > args.budget_s:
                checks[name] = {"skipped": f"time budget of {args.budget_s:.0f} s spent before it started"}
                continue
            check_started = time.perf_counter()
            try:
                checks[name] = run()
            except Exception:
                checks[name] = {"error": traceback.format_exc()[-4000:]}
                release()
            checks[name]["check_s"] = round(time.perf_counter() - check_started, 1)
            print(f"[device_check] {name}: {json.dumps(checks[name], default=str)[:300]}", flush=True)
            write_summary(out, args, device, sizes, checks, started)  # after every check: a cut-off run keeps its results
    print(markdown(write_summary(out, args, device, sizes, checks, started)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
