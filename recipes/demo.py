"""`halign demo`: the whole mission on the toy world, on a CPU, with nothing downloaded.

toy world -> tiny checkpoint (built once, cached) -> scores before -> K sampled candidates per prompt ->
offline grounding judge -> preference pairs -> DPO with LoRA through trl -> scores after ->
table, JSON report and PNG plot. Every stage writes its own files and manifest under the run folder,
through the same functions the stage CLIs use.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halign.align.rlaif import TOY_QA_FRACTION
from halign.data_gen.io import ensure_writable_dir, read_records, write_json, write_jsonl, write_manifest

METRICS = ("chair_s", "chair_i", "recall", "mean_len", "n")
POPE_METRICS = ("accuracy", "f1", "yes_ratio")
# A checkpoint that builds in seconds, for --quick (the tests share it through the cache).
QUICK_CHECKPOINT = {"sft_scenes": 120, "sft_steps": 40, "batch_size": 16}


@dataclass
class DemoConfig:
    out: str = "halign_runs/demo"
    eval_scenes: int = 300
    dpo_scenes: int = 600
    k: int = 8
    temperature: float = 1.0
    hallucination_weight: float = 2.0
    pair_strategy: str = "gap"
    min_gap: float = 1.0
    sample_num: int = 2
    # DPO plus an equally weighted SFT term on the chosen answer: the anchor keeps the model from learning
    # "stop early" (shorter answers hallucinate less, but lose recall) along with "don't invent partners".
    dpo: dict = field(default_factory=lambda: {
        "beta": 0.1, "learning_rate": 1e-3, "num_train_epochs": 2, "per_device_train_batch_size": 16,
        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0],
    })
    checkpoint: dict = field(default_factory=dict)  # ToyCheckpointConfig overrides; {} = the standard one
    rounds: int = 3  # alignment rounds; after the first, each samples fresh scenes with the current policy
    # Fraction of each round's training scenes asked a yes/no existence question instead of "Describe the
    # image." (the grounding judge scores the answer against the scene's objects): keeps the short-answer
    # skill that POPE measures from drifting while the captions are aligned (see align/rlaif.py).
    qa_fraction: float = TOY_QA_FRACTION
    seed: int = 0

    @classmethod
    def quick(cls, out: str) -> "DemoConfig":
        """A reduced run for tests and smoke checks: minutes become seconds, numbers mean little."""
        return cls(out=out, eval_scenes=24, dpo_scenes=32, k=4, checkpoint=dict(QUICK_CHECKPOINT), rounds=2,
                   dpo={"beta": 0.1, "learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 8,
                        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]})


def run_demo(cfg: DemoConfig, progress: bool = True, log=print) -> dict:
    from halign.align.dpo import TrainConfig, train
    from halign.align.model import load_policy
    from halign.data_gen import toy_world
    from halign.data_gen.pairs import PairsConfig
    from halign.data_gen.pairs import run as build_pairs
    from halign.data_gen.sample import SampleConfig
    from halign.data_gen.sample import run as sample
    from halign.data_gen.toy_checkpoint import ToyCheckpointConfig, get_toy_checkpoint
    from halign.recipes.evaluate import evaluate, pope_metric, toy_metric
    from halign.rewards.toy_pope import pope_prompts
    from halign.rewards.judges.cli import run_judge

    started = time.time()
    run_dir = ensure_writable_dir(cfg.out)
    world = toy_world.ToyWorldConfig(seed=cfg.seed)
    ckpt_cfg = ToyCheckpointConfig(world=world, seed=cfg.seed, **cfg.checkpoint)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.time() - t0, 2)

    t0 = time.time()
    checkpoint = get_toy_checkpoint(ckpt_cfg, progress=progress, log=log)
    lap("checkpoint", t0)

    t0 = time.time()
    dpo_prompts = toy_world.write_prompts(world, "dpo", cfg.dpo_scenes, run_dir / "world",
                                          qa_fraction=cfg.qa_fraction)
    # Held out for real: no evaluation image repeats a drawing seen in SFT or DPO.
    seen = toy_world.signatures(world, "sft", ckpt_cfg.sft_scenes)
    seen |= toy_world.signatures(world, "dpo", cfg.dpo_scenes * cfg.rounds)
    eval_prompts = toy_world.write_prompts(world, "eval", cfg.eval_scenes, run_dir / "world", exclude=seen)
    write_jsonl(run_dir / "world" / "eval_prompts.jsonl", eval_prompts)
    write_jsonl(run_dir / "world" / "dpo_prompts.jsonl", dpo_prompts)
    lap("world", t0)

    metric = toy_metric()
    t0 = time.time()
    model, processor = load_policy(checkpoint)
    before = evaluate(model, processor, eval_prompts, metric, str(checkpoint), progress=progress,
                      desc="scoring before")
    write_json(run_dir / "report_before.json", before)
    # A second metric, on scenes no judge ever scores (DESIGN: judges never see their evaluator): yes/no
    # existence questions, random / popular / adversarial negatives. With qa_fraction > 0 the judge scores
    # the same kind of question, but only on training scenes.
    pope_items = pope_prompts(eval_prompts)
    pope_before = evaluate(model, processor, pope_items, pope_metric(), str(checkpoint), max_new_tokens=4,
                           progress=progress, desc="POPE before")
    write_json(run_dir / "pope_before.json", pope_before)
    lap("eval_before", t0)

    t0 = time.time()
    sample_cfg = SampleConfig(model=str(checkpoint), k=cfg.k, temperature=cfg.temperature, seed=cfg.seed)
    candidates_path = sample(sample_cfg, run_dir / "world" / "dpo_prompts.jsonl", run_dir / "sample",
                             model=model, processor=processor, progress=progress)
    lap("sample", t0)

    t0 = time.time()
    judge_options = {"vocabulary": "toy", "hallucination_weight": cfg.hallucination_weight}
    judgments_path, _, _ = run_judge("grounding", candidates_path, run_dir / "judge" / "judgments.jsonl",
                                     options=judge_options, progress=progress)
    lap("judge", t0)

    t0 = time.time()
    pairs_cfg = PairsConfig(strategy=cfg.pair_strategy, min_gap=cfg.min_gap, sample_num=cfg.sample_num,
                            seed=cfg.seed)
    pairs_dir = build_pairs(pairs_cfg, judgments_path, candidates_path, run_dir / "sample" / "prompts.jsonl",
                            run_dir / "pairs")
    pair_summary = json.loads((run_dir / "pairs" / "summary.json").read_text())
    lap("pairs", t0)

    t0 = time.time()
    del model
    train_cfg = TrainConfig(model=str(checkpoint), pairs=str(pairs_dir), output_dir=str(run_dir / "train"),
                            dpo={**cfg.dpo, "seed": cfg.seed})
    trained = train(train_cfg, progress=progress)
    lap("train", t0)

    history = [{"round": 0, **{k: before["metrics"][k] for k in METRICS}}]
    if cfg.rounds > 1:
        # Further on-policy rounds (iterative RLAIF): fresh scenes, sampled by the current policy.
        t0 = time.time()
        trained = more_rounds(cfg, trained, judge_options, run_dir, eval_prompts, metric, history, progress, log)
        lap("more_rounds", t0)

    t0 = time.time()
    model, processor = load_policy(trained)
    after = evaluate(model, processor, eval_prompts, metric, str(trained), progress=progress, desc="scoring after")
    write_json(run_dir / "report_after.json", after)
    pope_after = evaluate(model, processor, pope_items, pope_metric(), str(trained), max_new_tokens=4,
                          progress=progress, desc="POPE after")
    write_json(run_dir / "pope_after.json", pope_after)
    lap("eval_after", t0)

    report = {
        "before": {k: before["metrics"][k] for k in METRICS},
        "after": {k: after["metrics"][k] for k in METRICS},
        "pope": {"before": {k: pope_before["metrics"][k] for k in POPE_METRICS},
                 "after": {k: pope_after["metrics"][k] for k in POPE_METRICS}},
        "rounds": history + [{"round": cfg.rounds, **{k: after["metrics"][k] for k in METRICS}}],
        "pairs": pair_summary["pairs"],
        "pair_summary": pair_summary,
        "judge": {"judge": "grounding", **judge_options},
        "checkpoint": str(checkpoint),
        "trained": str(trained),
        "wall_seconds": round(time.time() - started, 1),
        "stage_seconds": timings,
        "config": asdict(cfg),
    }
    write_json(run_dir / "demo_report.json", report)
    return report


def more_rounds(cfg: DemoConfig, trained, judge_options: dict, run_dir: Path, eval_prompts: list[dict], metric,
                history: list[dict], progress: bool, log) -> str:
    """Rounds 2..R through the RLAIF loop's own round function; returns the final policy checkpoint."""
    from halign.align.export import merge_adapter
    from halign.align.model import load_policy
    from halign.align.rlaif import RlaifConfig, run_round
    from halign.recipes.evaluate import evaluate

    rlaif_cfg = RlaifConfig(
        model=str(trained), out=str(run_dir), rounds=cfg.rounds, prompts_per_round=cfg.dpo_scenes,
        qa_fraction=cfg.qa_fraction,
        sample={"k": cfg.k, "temperature": cfg.temperature}, judge="grounding", judge_options=dict(judge_options),
        pairs={"strategy": cfg.pair_strategy, "min_gap": cfg.min_gap, "sample_num": cfg.sample_num},
        dpo=dict(cfg.dpo), seed=cfg.seed)
    policy = str(merge_adapter(trained, run_dir / "round1_policy"))
    for r in range(1, cfg.rounds):
        model, processor = load_policy(policy)
        scored = evaluate(model, processor, eval_prompts, metric, policy, progress=progress,
                          desc=f"scoring round {r}")
        history.append({"round": r, **{k: scored["metrics"][k] for k in METRICS}})
        log(f"round {r}: CHAIR_s {scored['metrics']['chair_s']:.3f}  CHAIR_i {scored['metrics']['chair_i']:.3f}  "
            f"recall {scored['metrics']['recall']:.3f}; round {r + 1}/{cfg.rounds} next")
        policy = run_round(rlaif_cfg, r, policy, ensure_writable_dir(run_dir / f"round{r + 1}"), progress)
    return policy


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="halign demo: toy world, held-out scenes")
    for col in ("metric", "before", "after", "change"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    for key in METRICS:
        b, a = report["before"][key], report["after"][key]
        change = f"{a / b:.2f}x" if key != "n" and b else ""
        fmt = "{:d}" if key == "n" else "{:.3f}"
        table.add_row(key, fmt.format(b), fmt.format(a), change)
    for key in POPE_METRICS:
        b, a = report["pope"]["before"][key], report["pope"]["after"][key]
        table.add_row(f"POPE {key}", f"{b:.3f}", f"{a:.3f}", f"{a / b:.2f}x" if b else "")
    console = Console()
    console.print(table)
    console.print(f"pairs: {report['pairs']}  judge: {report['judge']['judge']}  "
                  f"wall time: {report['wall_seconds']:.0f} s")


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from halign.align.rlaif import draw_rounds

    keys = ["chair_s", "chair_i", "recall"]
    rounds = report.get("rounds", [])
    fig, axes = plt.subplots(1, 2 if len(rounds) > 2 else 1, figsize=(11 if len(rounds) > 2 else 6, 3.8),
                             squeeze=False)
    ax = axes[0][0]
    xs = range(len(keys))
    after_label = f"after {len(rounds) - 1} rounds" if len(rounds) > 2 else "after DPO"
    ax.bar([x - 0.2 for x in xs], [report["before"][k] for k in keys], width=0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [report["after"][k] for k in keys], width=0.4, label=after_label)
    ax.set_xticks(list(xs), ["CHAIR_s", "CHAIR_i", "recall"])
    ax.set_ylim(0, 1.15)
    ax.set_title(f"toy world, {report['before']['n']} held-out scenes")
    ax.legend(loc="upper left")
    for x, k in zip(xs, keys):
        ax.text(x - 0.2, report["before"][k] + 0.02, f"{report['before'][k]:.2f}", ha="center", fontsize=8)
        ax.text(x + 0.2, report["after"][k] + 0.02, f"{report['after'][k]:.2f}", ha="center", fontsize=8)
    if len(rounds) > 2:
        draw_rounds(axes[0][1], rounds)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="halign_runs/demo", help="run folder (default: halign_runs/demo)")
    parser.add_argument("--json", default=None, help="also write the demo report JSON here")
    parser.add_argument("--plot", default=None, help="PNG plot path (default: RUN/demo.png)")
    parser.add_argument("--quick", action="store_true", help="reduced run for smoke tests (seconds, not minutes)")
    parser.add_argument("--rounds", type=int, default=None, help="alignment rounds (default 3; --quick: 2)")
    parser.add_argument("--qa-fraction", type=float, default=None,
                        help=f"fraction of each round's prompts that are yes/no existence questions "
                             f"(default {TOY_QA_FRACTION}; 0 = captions only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    cfg = DemoConfig.quick(args.out) if args.quick else DemoConfig(out=args.out)
    cfg.seed = args.seed
    if args.rounds is not None:
        if args.rounds < 1:
            raise ValueError("--rounds must be >= 1")
        cfg.rounds = args.rounds
    if args.qa_fraction is not None:
        cfg.qa_fraction = args.qa_fraction
    ensure_writable_dir(args.out)
    if args.json:
        ensure_writable_dir(Path(args.json).parent)
    report = run_demo(cfg, progress=not args.no_progress)
    plot_path = plot(report, Path(args.plot) if args.plot else Path(args.out) / "demo.png")
    report["plot"] = str(plot_path)
    write_json(Path(args.out) / "demo_report.json", report)
    if args.json:
        write_json(args.json, report)
    print_table(report)
    print(f"report: {args.json or Path(args.out) / 'demo_report.json'}  plot: {plot_path}")
    return 0
