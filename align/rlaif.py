"""`halign rlaif`: iterative RLAIF, as RLAIF-V's multi-round loop.

Each round samples with the *current* policy (on-policy data), judges, builds pairs, trains DPO against
the current policy as reference, merges LoRA into a standalone checkpoint for the next round, and
evaluates. Every round lives in its own folder and ends with `done.json`; a restarted run skips finished
rounds and goes on from the last one. Fresh prompts each round (round r takes slice r of the prompt
stream) keep the policy from over-fitting one set of images.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, read_records, write_json, write_jsonl

EVAL_KEYS = ("chair_s", "chair_i", "recall", "mean_len", "n")
# Share of each round's toy-world prompts that ask a yes/no existence question instead of a caption. Trained
# on captions only, the policy's short-answer skill drifts (toy POPE 0.98 -> 0.90-0.95 after 3 rounds, seeds
# 0-3); with a quarter of the prompts asking, POPE stays at 0.97-0.98 and CHAIR / recall are unchanged
# (README, "What the demo shows"). A half was less stable (0.92-0.98).
TOY_QA_FRACTION = 0.25


@dataclass
class RlaifConfig:
    model: str  # checkpoint folder, or "toy" for the cached toy-world checkpoint
    out: str = "halign_runs/rlaif"
    rounds: int = 3
    prompts: str | None = None  # prompt records (JSONL); None = the toy world's "dpo" split
    prompts_per_round: int = 600
    # Fraction of each round's toy-world prompts that ask a yes/no existence question instead of a caption,
    # so the short-answer skill is trained too (data_gen/toy_world.mix_existence_questions). None: the
    # measured TOY_QA_FRACTION on toy-world prompts, 0 with a prompts file (it brings its own questions).
    qa_fraction: float | None = None
    eval_prompts: str | None = None  # records with ground-truth `objects`; None = toy world held-out scenes
    eval_n: int = 300
    vocabulary: str = "toy"  # object vocabulary for evaluation ('toy' or a JSON file)
    sample: dict = field(default_factory=lambda: {"k": 8, "temperature": 1.0})
    judge: str = "grounding"
    judge_options: dict = field(default_factory=lambda: {"vocabulary": "toy", "hallucination_weight": 2.0})
    pairs: dict = field(default_factory=lambda: {"strategy": "gap", "min_gap": 1.0, "sample_num": 2})
    dpo: dict = field(default_factory=lambda: {
        "beta": 0.1, "learning_rate": 1e-3, "num_train_epochs": 2, "per_device_train_batch_size": 16,
        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]})
    peft: dict | None = field(default_factory=dict)
    seed: int = 0

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


def _resolve_model(model: str, log) -> str:
    if model == "toy":
        from halign.data_gen.toy_checkpoint import get_toy_checkpoint

        return str(get_toy_checkpoint(log=log))
    return model


def round_slice(r: int, per_round: int, start: int = 0) -> slice:
    """Round r (0-based) takes slice r of a prompt stream that begins at `start`: every round sees fresh
    prompts and no two rounds share one. `halign run` draws its toy-world rounds with it too."""
    return slice(start + r * per_round, start + (r + 1) * per_round)


def _round_prompts(cfg: RlaifConfig, r: int, folder: Path) -> Path:
    """The prompts for round r (0-based): slice r of the stream, written next to the round's outputs."""
    path = folder / "prompts.jsonl"
    window = round_slice(r, cfg.prompts_per_round)
    if cfg.prompts is None:
        from halign.data_gen import toy_world

        records = toy_world.write_prompts(toy_world.ToyWorldConfig(seed=cfg.seed), "dpo", cfg.prompts_per_round,
                                          folder / "world", start=window.start, qa_fraction=cfg.qa_fraction)
    else:
        records = read_records(cfg.prompts)[window]
        if not records:
            raise ValueError(f"{cfg.prompts} has no prompts left for round {r + 1} "
                             f"({cfg.prompts_per_round} per round)")
    return write_jsonl(path, records)


def _eval_prompts(cfg: RlaifConfig, out: Path) -> list[dict]:
    if cfg.eval_prompts is not None:
        return read_records(cfg.eval_prompts)
    from halign.data_gen import toy_world
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig

    world = toy_world.ToyWorldConfig(seed=cfg.seed)
    # Held out from SFT and from every round's prompts.
    seen = toy_world.signatures(world, "sft", ToyCheckpointConfig().sft_scenes)
    seen |= toy_world.signatures(world, "dpo", cfg.rounds * cfg.prompts_per_round)
    return toy_world.write_prompts(world, "eval", cfg.eval_n, out / "eval_world", exclude=seen)


def _evaluate(policy: str, prompts: list[dict], cfg: RlaifConfig, path: Path, progress: bool) -> dict:
    from halign.align.model import load_policy
    from halign.recipes.evaluate import evaluate
    from halign.rewards.judges.grounding import load_vocabulary
    from halign.rewards.object_hallucination import ObjectHallucinationMetric

    model, processor = load_policy(policy)
    report = evaluate(model, processor, prompts, ObjectHallucinationMetric(load_vocabulary(cfg.vocabulary)), policy,
                      progress=progress, desc=f"scoring {path.stem}")
    write_json(path, report)
    return report["metrics"]


def run_round(cfg: RlaifConfig, r: int, policy: str, folder: Path, progress: bool) -> str:
    """One round; returns the new policy checkpoint."""
    from halign.align.dpo import TrainConfig, train
    from halign.align.export import merge_adapter
    from halign.data_gen.pairs import PairsConfig
    from halign.data_gen.pairs import run as build_pairs
    from halign.data_gen.sample import SampleConfig
    from halign.data_gen.sample import run as sample
    from halign.rewards.judges.cli import run_judge

    prompts = _round_prompts(cfg, r, folder)
    sample_cfg = SampleConfig(model=policy, **{"seed": cfg.seed + r, **cfg.sample})
    candidates = sample(sample_cfg, prompts, folder / "sample", progress=progress)
    judgments, _, _ = run_judge(cfg.judge, candidates, folder / "judge" / "judgments.jsonl",
                                options=dict(cfg.judge_options), progress=progress)
    pairs = build_pairs(PairsConfig(**{"seed": cfg.seed + r, **cfg.pairs}), judgments, candidates,
                        folder / "sample" / "prompts.jsonl", folder / "pairs")
    trained = train(TrainConfig(model=policy, pairs=str(pairs), output_dir=str(folder / "train"),
                                dpo={**cfg.dpo, "seed": cfg.seed + r}, peft=cfg.peft), progress=progress)
    if cfg.peft is None:
        return str(trained)
    return str(merge_adapter(trained, folder / "policy"))


def run_rlaif(cfg: RlaifConfig, progress: bool = True, log=print) -> dict:
    started = time.time()
    out = ensure_writable_dir(cfg.out)
    write_json(out / "config.json", asdict(cfg))
    policy = _resolve_model(cfg.model, log)
    eval_prompts = _eval_prompts(cfg, out)
    history_path = out / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    if not history:
        history.append({"round": 0, "policy": policy, **_evaluate(policy, eval_prompts, cfg, out / "round0.json",
                                                                   progress)})
        write_json(history_path, history)
    for r in range(cfg.rounds):
        folder = out / f"round{r + 1}"
        done = folder / "done.json"
        if done.exists():
            policy = json.loads(done.read_text())["policy"]
            log(f"round {r + 1}: already finished, policy {policy}")
            continue
        t0 = time.time()
        log(f"round {r + 1}/{cfg.rounds}: sample, judge, pairs, train from {policy}")
        policy = run_round(cfg, r, policy, ensure_writable_dir(folder), progress)
        metrics = _evaluate(policy, eval_prompts, cfg, folder / "report.json", progress)
        entry = {"round": r + 1, "policy": policy, "seconds": round(time.time() - t0, 1), **metrics}
        history = [h for h in history if h["round"] != r + 1] + [entry]
        write_json(history_path, history)
        write_json(done, entry)  # written last: a round without it is redone from scratch
        log("round {round}: CHAIR_s {chair_s:.3f}  CHAIR_i {chair_i:.3f}  recall {recall:.3f}".format(**entry))
    summary = {"rounds": history, "final_policy": policy, "wall_seconds": round(time.time() - started, 1)}
    write_json(out / "rlaif_report.json", summary)
    plot_rounds(history, out / "rlaif.png")
    return summary


def draw_rounds(ax, history: list[dict]) -> None:
    """CHAIR_s, CHAIR_i and recall against the round number on a matplotlib axis."""
    rounds = [h["round"] for h in history]
    for key, label in (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall")):
        ax.plot(rounds, [h[key] for h in history], marker="o", label=label)
    ax.set_xticks(rounds)
    ax.set_xlabel("RLAIF round (0 = before alignment)")
    ax.set_ylim(0, 1.05)
    ax.legend()
    ax.set_title("hallucination across RLAIF rounds")


def plot_rounds(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    draw_rounds(ax, history)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="toy", help="checkpoint folder, or 'toy' (default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="halign_runs/rlaif")
    parser.add_argument("--prompts", help="prompt records JSONL (default: toy world scenes)")
    parser.add_argument("--prompts-per-round", type=int, default=600)
    parser.add_argument("--qa-fraction", type=float, default=None,
                        help="fraction of each round's toy-world prompts that are yes/no existence questions "
                             f"(default {TOY_QA_FRACTION}; 0 with --prompts)")
    parser.add_argument("--eval-prompts", help="evaluation records with ground-truth objects (default: toy world)")
    parser.add_argument("--eval-n", type=int, default=300)
    parser.add_argument("--full", action="store_true", help="full-parameter training instead of LoRA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    cfg = RlaifConfig(model=args.model, out=args.out, rounds=args.rounds, prompts=args.prompts,
                      prompts_per_round=args.prompts_per_round, qa_fraction=args.qa_fraction,
                      eval_prompts=args.eval_prompts, eval_n=args.eval_n,
                      peft=None if args.full else {}, seed=args.seed)
    summary = run_rlaif(cfg, progress=not args.no_progress)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="halign rlaif")
    for col in ("round", *EVAL_KEYS):
        table.add_column(col, justify="right")
    for h in summary["rounds"]:
        table.add_row(str(h["round"]), *(f"{h[k]:.3f}" if k != "n" else str(h[k]) for k in EVAL_KEYS))
    Console().print(table)
    print(f"report: {Path(args.out) / 'rlaif_report.json'}  plot: {Path(args.out) / 'rlaif.png'}")
    return 0
