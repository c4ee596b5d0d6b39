"""DPO on preference pairs through `trl.DPOTrainer`, with LoRA (peft) or full-parameter training.

The config is TRL's own: `dpo` holds `DPOConfig` field names, `peft` holds `LoraConfig` field names and
`peft: null` means full fine-tuning. Unknown keys fail at start-up, naming the key.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

from halign.data_gen.fields import add_flags, field
from halign.data_gen.io import ensure_writable_dir, write_json, write_manifest

# LoRA on the language model's attention and MLP projections (Llama, Qwen, Mistral, Gemma naming;
# Idefics3/SmolVLM call their decoder `text_model`).
# The vision tower and projector stay frozen, as most VLM preference-tuning recipes do.
DEFAULT_LORA = {
    "r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "bias": "none",
    "target_modules": r".*(language_model|text_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
}
DEFAULT_DPO = {
    "beta": 0.1, "learning_rate": 5e-4, "num_train_epochs": 2, "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1, "lr_scheduler_type": "linear", "warmup_steps": 5, "logging_steps": 10,
    "loss_type": ["sigmoid"], "seed": 0, "max_length": None,
    # trl turns activation checkpointing on by default; on small models it costs time and saves little.
    "activation_checkpointing": False,
}


@dataclass
class TrainConfig:
    # Each field's help lives in its metadata (data_gen/fields.py); `halign train` derives its flags from it.
    model: str = field(help="policy checkpoint: a folder or hub id (required unless --config)")
    pairs: str = field(help="pairs dataset folder, the output of `halign pairs` (required unless --config)")
    output_dir: str = field(help="output folder (required unless --config)", flag="--out")
    dpo: dict = field(default_factory=dict, help="trl DPOConfig fields over DEFAULT_DPO (dpo.KEY=VALUE)")
    peft: dict | None = field(default_factory=dict, help="peft LoraConfig fields over DEFAULT_LORA (peft.KEY=VALUE); "
                                                         "None = full fine-tuning (--full)")
    dtype: str = field("float32", help="weights dtype: float32, bfloat16, float16")
    strict_pairs: bool = field(False, help="stop at the first bad pair instead of skipping it")
    freeze: dict = field(default_factory=dict, help='full mode: which parts stay frozen, e.g. {"vision_tower": '
                                                    'true, "projector": false}')
    # e.g. {"every_n_steps": 50, "n": 50} (toy world held-out scenes) or
    # {"prompts": "eval.jsonl", "vocabulary": "objects.json", "every_n_steps": 100}.
    track: dict | None = field(None, help="hallucination tracking during training (--track-every N); None = off")
    # FastVisionDPOTrainer (align/fast_dpo.py): trl's loss with precomputed reference log-probs and one packed
    # row per pair; families it cannot pack fall back to trl's DPOTrainer with a log line.
    fast: bool = field(True, help="the fast vision path (align/fast_dpo.py); off: plain trl.DPOTrainer "
                                  "(recipe key train.fast: false)")
    # Padding-free: each pair keeps its own positions, a block-diagonal mask keeps pairs apart. Pays off with
    # flex_attention, which skips the masked blocks; with a dense mask (sdpa, eager) attention grows with the row.
    row_tokens: int | None = field(None, help="fast path: pack several pairs per row, up to this many tokens "
                                              "(recipe key train.row_tokens); None = one pair per row")
    resume: bool = field(False, help="continue from the newest checkpoint in OUT/trainer (save with "
                                     "dpo.save_strategy=steps)")
    # Runs on the fast trainer only (it needs the packed rows and precomputed reference log-probs).
    mdpo: dict | bool | None = field(None, help="mDPO's image-conditional and anchor terms (align/mdpo.py): true = "
                                                "the paper's settings, or MdpoConfig fields; None/false = plain DPO")
    # Checked before any model loads.
    quantization: dict | bool | None = field(None, help="QLoRA (align/qlora.py): true = 4-bit NF4 + double "
                                                        "quantization + bf16 compute, or BitsAndBytesConfig fields; "
                                                        "LoRA only, needs bitsandbytes and a CUDA GPU")

    def dpo_args(self) -> dict:
        return {**DEFAULT_DPO, **self.dpo}

    def lora_args(self) -> dict | None:
        return None if self.peft is None else {**DEFAULT_LORA, **self.peft}


def check_keys(kind: str, given: dict, cls) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"unknown {kind} key(s): {', '.join(unknown)} (they must be {cls.__name__} field names)")


def make_dpo_config(cfg: TrainConfig, output_dir: Path):
    from trl import DPOConfig

    args = cfg.dpo_args()
    check_keys("dpo", args, DPOConfig)
    # Things halign owns: where files go, and no surprise uploads or trackers.
    args.setdefault("report_to", "none")
    args.update(output_dir=str(output_dir), remove_unused_columns=False)
    # Intermediate checkpoints only when asked for (dpo.save_strategy=steps, dpo.save_steps=N): `resume` uses them.
    args.setdefault("save_strategy", "no")
    args.setdefault("dataloader_num_workers", 0)
    if os.environ.get("DS_ACCELERATOR") == "cpu":  # DeepSpeed on CPU (align/launch.py): ranks talk over gloo
        args.setdefault("ddp_backend", "gloo")
    # trl defaults to bf16, which a CPU cannot do: use it only where the hardware has it.
    import torch

    args.setdefault("bf16", bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()))
    return DPOConfig(**args)


def make_lora_config(cfg: TrainConfig):
    lora = cfg.lora_args()
    if lora is None:
        return None
    from peft import LoraConfig

    check_keys("peft", lora, LoraConfig)
    return LoraConfig(task_type="CAUSAL_LM", **lora)


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train on the pairs dataset; returns the output folder (a LoRA adapter or a full checkpoint)."""
    import datasets
    import transformers
    from trl import DPOTrainer

    from halign.align.collator import make_data_collator
    from halign.align.model import load_policy
    from halign.align.validate import validate_pairs

    from halign.align.mdpo import MdpoConfig
    from halign.align.qlora import make_quantization_config

    started = time.time()
    mdpo = MdpoConfig.from_setting(cfg.mdpo)  # bad mdpo keys fail here, before anything loads
    quantization = make_quantization_config(cfg.quantization, lora=cfg.peft is not None)
    out = ensure_writable_dir(cfg.output_dir)
    dpo_config = make_dpo_config(cfg, out / "trainer")
    dpo_config.disable_tqdm = not progress
    lora_config = make_lora_config(cfg)
    pairs_path = Path(cfg.pairs)
    if not pairs_path.exists():
        raise FileNotFoundError(f"pairs dataset not found: {pairs_path}")
    dataset = datasets.load_from_disk(str(pairs_path))
    keep = ["images", "prompt", "chosen", "rejected"]
    missing = [k for k in keep if k not in dataset.column_names]
    if missing:
        raise ValueError(f"pairs dataset {pairs_path} lacks column(s) {missing}")
    transformers.set_seed(dpo_config.seed)
    model_path = cfg.model
    if lora_config is None and (Path(cfg.model) / "adapter_config.json").exists():
        model_path = merged_for_full_training(cfg.model, out, cfg.dtype)
    model, processor = load_policy(model_path, cfg.dtype, quantization_config=quantization)
    model.train()
    if cfg.freeze:
        from halign.align.freeze import freeze

        unknown = sorted(set(cfg.freeze) - {"vision_tower", "projector", "language_model"})
        if unknown:
            raise ValueError(f"unknown freeze key(s) {unknown}: use vision_tower, projector, language_model")
        freeze(model, **{"vision_tower": False, "projector": False, "language_model": False, **cfg.freeze})
    # Bad pairs are skipped (listed in skipped_pairs.jsonl) or, with strict_pairs, stop the run here, before
    # any training time is spent. Runs before select_columns so skipped records keep their prompt_id.
    main_process = int(os.environ.get("RANK", "0")) == 0
    dataset, pair_check = validate_pairs(dataset, processor, max_length=dpo_config.max_length,
                                         strict=cfg.strict_pairs, out_dir=out if main_process else None)
    # Native video pairs (data_gen/pairs.py): Qwen2-VL / Qwen2.5-VL and LLaVA-NeXT-Video read them, on either
    # trainer.
    videos = "videos" in dataset.column_names
    if videos:
        from halign.align.packing_video import VIDEO_COLUMNS, video_pairs_unsupported

        if why := video_pairs_unsupported(model):
            raise ValueError(why)
        if mdpo is not None:
            raise ValueError("mdpo corrupts images; it does not run on pairs with videos")
        keep = keep + [c for c in VIDEO_COLUMNS if c in dataset.column_names]
    trainer_cls, collator = DPOTrainer, make_data_collator(processor, dpo_config, videos=videos)
    why = fast_path_refusal(cfg, model, dpo_config)
    if why and mdpo is not None:
        raise ValueError(f"mdpo needs the fast DPO trainer, which cannot run here: {why}")
    if not why:
        from halign.align.fast_dpo import FastVisionDPOTrainer

        trainer_cls, collator = FastVisionDPOTrainer, None
        keep = keep + [c for c in ("prompt_id",) if c in dataset.column_names]  # names records in errors
    elif cfg.fast:
        print(f"fast DPO: falling back to trl's DPOTrainer ({why})")
    dataset = dataset.select_columns(keep)
    extra = {"mdpo": mdpo} if mdpo is not None else {}
    if cfg.row_tokens and why:  # trl's trainer has one pair per row: say so rather than drop the setting silently
        print(f"row_tokens={cfg.row_tokens} ignored: several pairs per row needs the fast DPO trainer")
    elif cfg.row_tokens:
        extra["row_tokens"] = cfg.row_tokens
    trainer = trainer_cls(model=model, args=dpo_config, train_dataset=dataset, processing_class=processor,
                          peft_config=lora_config, data_collator=collator, **extra)
    from transformers import PrinterCallback

    from halign.align.callbacks import CompactLogPrinter, NanLossGuard

    trainer.add_callback(NanLossGuard())
    if not progress:  # the trainer prints every log dict whole when its progress bar is off
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(CompactLogPrinter())
    if cfg.track:
        attach_tracking(trainer, cfg.track, processor, out)
    resume = None
    if cfg.resume:
        checkpoints = sorted((out / "trainer").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
        resume = str(checkpoints[-1]) if checkpoints else None
        print(f"resuming from {resume}" if resume else "no checkpoint to resume from: starting fresh")
    # The trainer's wandb callback opens a run when none is open and never finishes it, so the next round of
    # an RLAIF loop would log into this run with its steps starting again at 0. One train() is one run; a
    # run the caller opened stays open.
    opens_wandb_run = reports_to_wandb(dpo_config) and open_wandb_run() is None
    result = trainer.train(resume_from_checkpoint=resume)
    if opens_wandb_run and (run := open_wandb_run()) is not None:
        run.finish()
    trainer.save_model(str(out))  # gathers ZeRO-3 shards; writes on the main process only
    if not trainer.accelerator.is_main_process:
        return out
    processor.save_pretrained(str(out))
    history = [h for h in trainer.state.log_history if "loss" in h]
    write_json(out / "train_log.json", trainer.state.log_history)
    write_manifest(out, "train", dataclasses.asdict(cfg), {"pairs": pairs_path}, started, extra={
        "train_runtime": result.metrics.get("train_runtime"), "steps": trainer.state.global_step,
        "final_loss": history[-1]["loss"] if history else None, "pairs": len(dataset),
        "mode": "lora" if lora_config else "full", "world_size": trainer.args.world_size,
        "trainer": type(trainer).__name__, "pair_check": pair_check, "zero_stage": zero_stage(trainer),
    })
    return out


def reports_to_wandb(dpo_config) -> bool:
    report_to = dpo_config.report_to or []
    report_to = [report_to] if isinstance(report_to, str) else report_to
    if "all" in report_to:
        import importlib.util

        return importlib.util.find_spec("wandb") is not None
    return "wandb" in report_to


def open_wandb_run():
    import wandb

    return wandb.run


def zero_stage(trainer) -> int | None:
    """The DeepSpeed ZeRO stage the trainer ran under, None without DeepSpeed."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return None if plugin is None else int(plugin.zero_stage)


def merged_for_full_training(adapter_dir: str, out: Path, dtype: str) -> str:
    """Full fine-tuning from a LoRA output folder: its adapter merged into the base, saved as a checkpoint that
    both the policy and trl's reference copy load (a merged in-memory model would have no trainable weights
    and a reference loaded from the bare base). Merged on the main process; the other ranks wait for it."""
    from accelerate import PartialState

    from halign.align.export import merge_adapter

    merged = out / "merged_input"
    state = PartialState()
    if state.is_main_process:
        print(f"full fine-tuning from a LoRA adapter: merging {adapter_dir} into its base first -> {merged}")
        merge_adapter(adapter_dir, merged, dtype=dtype)
    state.wait_for_everyone()
    return str(merged)


def fast_path_refusal(cfg: TrainConfig, model, dpo_config) -> str | None:
    """None when FastVisionDPOTrainer can run this training, else why not (trl's DPOTrainer runs instead)."""
    if not cfg.fast:
        return "fast: false"
    from halign.align.fast_dpo import check_supported
    from halign.align.packing import packing_unsupported

    why = packing_unsupported(model)
    if not why:
        try:
            check_supported(dpo_config)
        except ValueError as err:  # a loss or setting only trl implements: trl's path, same results
            why = str(err).replace("; use fast: false", "")
    return why


def attach_tracking(trainer, track: dict, processor, out: Path):
    from halign.align.callbacks import HallucinationCallback
    from halign.data_gen.io import read_records
    from halign.rewards.object_hallucination import ObjectHallucinationMetric
    from halign.rewards.vocabulary import load_vocabulary

    unknown = sorted(set(track) - {"prompts", "n", "every_n_steps", "vocabulary", "max_new_tokens"})
    if unknown:
        raise ValueError(f"unknown track key(s) {unknown}: use prompts, n, every_n_steps, vocabulary, max_new_tokens")
    n = int(track.get("n", 50))
    if track.get("prompts"):
        prompts = read_records(track["prompts"])[:n]
    else:
        from halign.data_gen import toy_world

        # A separate split: never the scenes the final evaluation reports on.
        prompts = toy_world.write_prompts(toy_world.ToyWorldConfig(), "track", n, out / "track_world")
    metric = ObjectHallucinationMetric(load_vocabulary(track.get("vocabulary", "toy")))
    return HallucinationCallback(prompts, metric, processor, every_n_steps=int(track.get("every_n_steps", 50)),
                                 jsonl_path=out / "hallucination.jsonl",
                                 max_new_tokens=int(track.get("max_new_tokens", 64))).attach(trainer)


def parse_value(text: str):
    """CLI override values: YAML scalars and lists (`1e-4`, `true`, `[sigmoid,sft]`), as every override."""
    from halign.data_gen.overrides import parse_value as parse

    return parse(text)


# TrainConfig fields that are flags as they are (types, defaults, help: the fields'). The mapping fields get
# shortcut flags below (--full, --qlora, --mdpo, --track-every, and dpo./peft./mdpo.KEY=VALUE).
FLAG_FIELDS = ["model", "pairs", "output_dir", "resume", "fast", "row_tokens"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, TrainConfig, FLAG_FIELDS, defaults={"model": None, "pairs": None, "output_dir": None})
    parser.add_argument("--config", default=None,
                        help="a TrainConfig as JSON (what a recipe's train stage launches); replaces the other options")
    parser.add_argument("--full", action="store_true", help="full-parameter training (peft: null)")
    parser.add_argument("--accelerate-config", default=None,
                        help="single | ddp | zero2 | zero3 (shipped configs) or an accelerate config file")
    parser.add_argument("--num-processes", type=int, default=1, help="processes (GPUs) to launch")
    parser.add_argument("--track-every", type=int, default=None,
                        help="every N steps, generate on held-out toy scenes and log CHAIR / recall")
    parser.add_argument("--qlora", action="store_true",
                        help="QLoRA: LoRA on a 4-bit NF4 base (needs bitsandbytes and a CUDA GPU)")
    parser.add_argument("--mdpo", action="store_true",
                        help="add mDPO's image-conditional and anchor terms (settings: mdpo.KEY=VALUE)")
    parser.add_argument("overrides", nargs="*", help="dpo.KEY=VALUE, peft.KEY=VALUE or mdpo.KEY=VALUE")


def main(args: argparse.Namespace) -> int:
    missing = [flag for name, flag in (("model", "--model"), ("pairs", "--pairs"), ("output_dir", "--out"))
               if not getattr(args, name)]
    if missing and not args.config:
        raise ValueError(f"{', '.join(missing)} required (or --config FILE)")
    if args.accelerate_config not in (None, "single") or args.num_processes > 1:
        import subprocess

        from halign.align.launch import launch_command

        train_argv = ["--model", args.model, "--pairs", args.pairs, "--out", args.output_dir, *args.overrides]
        if args.config:  # a recipe's train stage (recipes/stages.py): its TrainConfig as JSON
            train_argv = ["--config", args.config]
        if args.full:
            train_argv.append("--full")
        if args.track_every:
            train_argv += ["--track-every", str(args.track_every)]
        if args.resume:
            train_argv.append("--resume")
        if args.mdpo:
            train_argv.append("--mdpo")
        if args.qlora:
            train_argv.append("--qlora")
        if not args.fast:
            train_argv.append("--no-fast")
        if args.row_tokens:
            train_argv += ["--row-tokens", str(args.row_tokens)]
        argv, env = launch_command(args.accelerate_config or "ddp", args.num_processes, train_argv)
        return subprocess.run(argv, env={**os.environ, **env}).returncode
    if args.config:  # one process of a launched recipe training
        import json

        print(train(TrainConfig(**json.loads(Path(args.config).read_text()))))
        return 0
    from halign.data_gen.overrides import parse_override

    dpo, peft, mdpo = {}, ({} if not args.full else None), {}
    for item in args.overrides:
        parts, value = parse_override(item)
        if len(parts) != 2:
            raise ValueError(f"override {item!r} must look like dpo.KEY=VALUE or peft.KEY=VALUE")
        section, name = parts
        if section == "dpo":
            dpo[name] = value
        elif section == "peft" and peft is not None:
            peft[name] = value
        elif section == "mdpo":
            mdpo[name] = value
        else:
            raise ValueError(f"override {item!r}: unknown section {section!r} (or peft.* with --full)")
    if mdpo and not args.mdpo:
        raise ValueError("mdpo.* settings given without --mdpo")
    track = {"every_n_steps": args.track_every} if args.track_every else None
    print(train(TrainConfig(model=args.model, pairs=args.pairs, output_dir=args.output_dir, dpo=dpo, peft=peft,
                            track=track, resume=args.resume, mdpo=(mdpo or True) if args.mdpo else None,
                            quantization=True if args.qlora else None, fast=args.fast,
                            row_tokens=args.row_tokens)))
    return 0
