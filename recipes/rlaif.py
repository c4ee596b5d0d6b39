"""`halign rlaif`: iterative RLAIF (RLAIF-V's multi-round loop) that keeps the best round, not the last.

A thin alias of the engine (recipes/runner.py): `RlaifConfig.recipe()` states the run as a recipe with
`eval.rounds: kept`, and `run_rlaif` runs it. Each round samples with the *current* policy (on-policy data),
judges, builds pairs, trains DPO against the current policy as reference and merges LoRA into a standalone
checkpoint for the next round; every round is scored on a **validation** split. After the last round the
gate (recipes/round_gate.py) picks the round to keep by a declared rule, and only then are the model before
alignment and the kept policy scored on the **test** split, which no earlier decision looked at.

Layout (the engine's): `OUT/round_{r}/<stage>/` (source, sample, judge, omissions, pairs, train with
train/merged, validation), `OUT/validation/round_0/` (the starting model), the test reports in
`OUT/round_1/eval/report_before.json` and the kept round's `OUT/round_{k}/eval/report_after.json`, and
`OUT/rounds.json` / `rounds.png`. A restarted run skips every stage whose key is unchanged. Fresh prompts each
round: round r takes slice r of the prompt stream (toy world, or the prompts file in order).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from halign.data_gen.fields import add_flags, field
from halign.data_gen.toy_world import TOY_QA_FRACTION
from halign.recipes.round_gate import CAPTION_KEYS, GateRule, format_history


# The fields that are also `halign rlaif` flags (the rest are set from Python, or by `halign demo`).
FLAG_FIELDS = ["model", "rounds", "out", "prompts", "prompts_per_round", "qa_fraction", "eval_prompts",
               "val_prompts", "eval_n", "val_n", "omission_negatives", "seed"]


@dataclass
class RlaifConfig:
    model: str = field(help="checkpoint folder, or 'toy' for the toy-world checkpoint (seeded with --seed)")
    out: str = field("halign_runs/rlaif", help="run folder")
    rounds: int = field(3, help="RLAIF rounds; each samples with the previous round's policy")
    prompts: str | None = field(None, help="prompt records (JSONL), read in order, prompts_per_round per round "
                                           "(default: the toy world's dpo scenes)")
    prompts_per_round: int = field(600, help="prompts of one round (round r takes slice r of the stream)")
    qa_fraction: float | None = field(None, help=f"share of each round's toy-world prompts asked a yes/no existence "
                                                 f"question instead of a caption (default {TOY_QA_FRACTION}; 0 with "
                                                 f"--prompts, which brings its own questions)")
    eval_prompts: str | None = field(None, help="test records with ground-truth objects (default: held-out toy scenes)")
    eval_n: int = field(300, help="toy world: test scenes")
    val_prompts: str | None = field(None, help="validation records the gate chooses on (needed with --eval-prompts; "
                                               "disjoint from the test records)")
    val_n: int = field(200, help="toy world: validation scenes")
    gate: dict = field(default_factory=dict, help="GateRule overrides (metric, recall_tolerance, pope_tolerance, confidence)")
    toy_checkpoint: dict = field(default_factory=dict, help="ToyCheckpointConfig overrides with model 'toy'")
    sample: dict = field(default_factory=lambda: {"k": 8, "temperature": 1.0, "complete_yes_no": True},
                         help="SampleConfig fields (complete_yes_no: a yes/no prompt gets its unsampled answer too)")
    judge: str = field("grounding", help="judge name or dotted path")
    judge_options: dict = field(default_factory=lambda: {"vocabulary": "toy", "hallucination_weight": 2.0},
                                help="the judge's constructor options")
    pairs: dict = field(default_factory=lambda: {"strategy": "gap", "min_gap": 1.0, "sample_num": 2},
                        help="PairsConfig fields")
    omission_negatives: bool = field(False, help="also judge each clean answer minus its last item "
                                                 "(data_gen/omissions.py), so stopping early is punished too")
    dpo: dict = field(default_factory=lambda: {
        "beta": 0.1, "learning_rate": 1e-3, "num_train_epochs": 2, "per_device_train_batch_size": 16,
        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}, help="DPOConfig fields")
    peft: dict | None = field(default_factory=dict, help="LoraConfig fields; None = full fine-tuning")
    seed: int = field(0, help="seeds the world, the checkpoint and the alignment")

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.prompts_per_round < 1:
            raise ValueError("prompts_per_round must be >= 1")
        if self.qa_fraction is None:
            self.qa_fraction = TOY_QA_FRACTION if self.prompts is None else 0.0
        if not 0 <= self.qa_fraction <= 1:
            raise ValueError(f"qa_fraction must lie in [0, 1], got {self.qa_fraction}")
        if self.qa_fraction and self.prompts is not None:
            raise ValueError("qa_fraction mixes toy-world existence questions into the rounds; a prompts file "
                             "brings its own questions (put them in the file)")
        if (self.eval_prompts is None) != (self.val_prompts is None):
            raise ValueError("give both eval_prompts (test) and val_prompts (validation), or neither (toy world)")
        self.gate_rule()  # validates the overrides

    def gate_rule(self) -> GateRule:
        unknown = set(self.gate) - set(GateRule.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate keys {sorted(unknown)}; known: {sorted(GateRule.__dataclass_fields__)}")
        return GateRule(**self.gate)

    def toy_checkpoint_config(self):
        from halign.recipes.inputs import toy_checkpoint_config

        return toy_checkpoint_config({"seed": self.seed, "toy_checkpoint": self.toy_checkpoint})

    def recipe(self) -> dict:
        """The run as a recipe (the keys of recipes/config.py): what the engine executes."""
        if self.prompts is None:
            source = {"type": "toy_world", "split": "dpo", "n": self.prompts_per_round, "qa_fraction": self.qa_fraction}
        else:
            source = {"type": "jsonl", "path": self.prompts, "n": self.prompts_per_round}
        if self.eval_prompts is None:  # toy world: test scenes held out from the SFT and every round's scenes
            eval_source = {"type": "toy_world", "split": "eval", "n": self.eval_n, "exclude_seen": True}
            gate = {**self.gate, "val_scenes": self.val_n}
        else:
            eval_source = {"type": "jsonl", "path": self.eval_prompts}
            gate = {**self.gate, "source": {"type": "jsonl", "path": self.val_prompts}}
        return {"model": self.model, "seed": self.seed, "rounds": self.rounds, "toy_checkpoint": dict(self.toy_checkpoint),
                "source": source, "sample": dict(self.sample), "judge": {"name": self.judge, **self.judge_options},
                "omission_negatives": self.omission_negatives, "pairs": dict(self.pairs),
                "train": {"dpo": dict(self.dpo), "peft": self.peft},
                "eval": {"source": eval_source, "benchmark": "toy", "rounds": "kept"}, "gate": gate}

    def resolved(self) -> dict:
        from halign.recipes import config

        return config.resolve(self.recipe())


def _round_prompts(cfg: RlaifConfig, r: int, folder: Path) -> Path:
    """The prompts of round r (0-based), as the engine writes them (under folder/world)."""
    from halign.recipes import inputs, rounds

    round_cfg = rounds.round_config(cfg.resolved(), r + 1)
    return inputs.write_source(round_cfg, round_cfg["source"], Path(folder) / "world")


def eval_sets(cfg: RlaifConfig, out: Path) -> tuple[list[dict], list[dict]]:
    """(test, validation) records, as the engine draws them. Toy world: test scenes held out from the SFT and
    every round's prompts; validation scenes held out from those and from the test scenes."""
    from halign.recipes import inputs

    resolved = cfg.resolved()
    test = inputs.eval_records(resolved, Path(out) / "eval")
    return test, inputs.validation_records(resolved, Path(out), test)


def run_rlaif(cfg: RlaifConfig, progress: bool = True, log=print) -> dict:
    """Run the rounds through the engine; returns the validation scores per round (round 0 first, with
    "policy", "pairs", "seconds"), the gate's decision, the kept ("final_policy") and the last policy, and
    the test scores before alignment and for the kept round."""
    from halign.recipes.runner import run_config

    started = time.time()
    result = run_config(cfg.resolved(), cfg.out, progress=progress, log=log)
    summary = result["summary"]
    history = summary["validation"]
    for line in format_history(history, summary["kept_round"]):
        log("validation " + line)
    return {"rounds": history, "gate": summary["gate"], "final_policy": summary["kept_policy"],
            "last_policy": history[-1]["policy"], "test": summary["test"], "test_n": summary["test_n"],
            "validation_n": summary["validation_n"], "wall_seconds": round(time.time() - started, 1)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, RlaifConfig, FLAG_FIELDS, defaults={"model": "toy"})  # types, defaults, help: the fields'
    parser.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                        help="gate rule: metric=chair_i|chair_s, recall_tolerance=0.03, pope_tolerance=0.01, confidence=0.95")
    parser.add_argument("--full", action="store_true", help="full-parameter training instead of LoRA")
    parser.add_argument("--no-progress", action="store_true")


def parse_gate(options: list[str]) -> dict:
    """--gate KEY=VALUE options, read as every override is (data_gen/overrides.py)."""
    from halign.data_gen.overrides import parse_override

    gate = {}
    for option in options:
        parts, value = parse_override(option, "--gate")
        gate[".".join(parts)] = value
    return gate


def main(args: argparse.Namespace) -> int:
    cfg = RlaifConfig(**{name: getattr(args, name) for name in FLAG_FIELDS}, gate=parse_gate(args.gate),
                      peft=None if args.full else {})
    summary = run_rlaif(cfg, progress=not args.no_progress)
    from rich.console import Console
    from rich.table import Table

    chosen = summary["gate"]["chosen_round"]
    table = Table(title=f"halign rlaif: validation scores per round (kept: round {chosen})")
    keys = [k for k in (*CAPTION_KEYS, "pope_accuracy", "pope_yes_ratio") if k in summary["rounds"][0]]
    for col in ("round", *keys):
        table.add_column(col, justify="right")
    for h in summary["rounds"]:
        mark = " *" if h["round"] == chosen else ""
        table.add_row(f"{h['round']}{mark}", *(f"{h[k]:.3f}" if k != "n" else str(h[k]) for k in keys))
    Console().print(table)
    before, after = summary["test"]["before"], summary["test"]["after"]
    print(f"test ({summary['test_n']} records), before -> round {chosen}: "
          + "  ".join(f"{k} {before[k]:.3f} -> {after[k]:.3f}" for k in keys if k != "n"))
    print(f"gate: {summary['gate']['reason']}")
    print(f"report: {Path(args.out) / 'rounds.json'}  plot: {Path(args.out) / 'rounds.png'}")
    return 0
