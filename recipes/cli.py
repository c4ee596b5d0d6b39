"""`halign` command line: one subcommand per stage, each implemented in the stage's own module.

A stage module exposes `add_arguments(parser)` and `main(args) -> int`; this file only dispatches, so the
Python API, the CLI and recipe steps share one code path.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module implementing it, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("halign.recipes.demo", "toy world end to end: checkpoint, scores before, sample, judge, pairs, DPO, scores after"),
    "sample": ("halign.data_gen.sample", "sample K candidate answers per prompt with a checkpoint"),
    "judge": ("halign.rewards.judges.cli", "judge candidates (AI feedback) -> judgments.jsonl"),
    "pairs": ("halign.data_gen.pairs", "build preference pairs from judgments"),
    "gen-pairs": ("halign.recipes.gen_pairs", "sample + judge + pairs in one go"),
    "train": ("halign.align.dpo", "DPO training on preference pairs (LoRA or full)"),
    "rlaif": ("halign.recipes.rlaif", "iterative RLAIF: R rounds of sample, judge, pair, train; keeps the best round"),
    "export": ("halign.align.export", "merge LoRA adapters into a standalone checkpoint"),
    "eval": ("halign.recipes.evaluate", "generate with a checkpoint, then score a hallucination benchmark"),
    "score": ("halign.rewards.score_cli", "score existing responses: chair, pope, amber, mmhal"),
    "compare": ("halign.recipes.compare", "compare reports: table, confidence intervals, plot, per-item diff"),
    "run": ("halign.recipes.runner", "run a recipe YAML, skipping stages whose inputs are unchanged"),
    "toy-checkpoint": ("halign.data_gen.toy_checkpoint", "build (or find in the cache) the tiny toy-world checkpoint"),
}


def _load(name: str):
    module_name, _ = COMMANDS[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halign", description="Reduce hallucination in multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand imports its module: `halign --help` stays fast and a heavy
        # dependency of one stage never breaks another.
        if name == selected:
            module = _load(name)
            if module is not None:
                module.add_arguments(sp)
    return parser


def _not_deepspeed_cpu_notice(record) -> bool:
    return "Setting accelerator to CPU" not in record.getMessage()


def quiet_libraries() -> None:
    """Library chatter off (deprecation notices meant for library authors, per-load and per-dataset-write
    progress bars): what a user reads is halign's own progress bars, tables and errors."""
    import logging
    import warnings

    # DeepSpeed (where installed) warns on every import on a machine without a GPU that it runs on the CPU.
    # A filter, not a level: DeepSpeed sets its logger's level itself when it creates it. One named function, so
    # repeated calls (tests run many commands in one process) add it once.
    logging.getLogger("DeepSpeed").addFilter(_not_deepspeed_cpu_notice)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # a DataLoader default on machines without a GPU
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected not in COMMANDS:
        selected = None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = _load(args.command)
    if module is None:
        print(f"halign {args.command}: not available in this version yet", file=sys.stderr)
        return 2
    if args.command not in ("compare", "score"):  # the model-loading commands
        quiet_libraries()
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as err:
        # Input and configuration errors: one clear line, no traceback.
        print(f"halign {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
