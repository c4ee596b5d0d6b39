"""`halign demo --video`: the demo on the moving toy world (data_gen/toy_video.py), on a CPU, nothing downloaded.

moving toy world -> tiny LLaVA-NeXT-Video checkpoint (data_gen/toy_video_checkpoint.py: built once, cached)
-> R rounds of on-policy RLAIF on native video prompts (sample K captions of each clip, the offline grounding
judge against the objects of the clip's detailed caption, preference pairs, DPO with LoRA on the packed fast
path, merge) -> each round scored on validation clips -> the gate keeps the best round -> the model before
alignment and the kept round scored on held-out test clips: CHAIR over the clip (`toy_video`) and the
temporal and existence questions (`toy_video_qa`) -> tables, JSON report and PNG plot.

The honesty rules are the image demo's. Clips come in streams seeded by their split (toy_video.make_clip):
the checkpoint's SFT reads `sft`, the rounds' judge reads `dpo` (round r the r-th slice of n clips), the gate
chooses on `val`, and the test clips are `eval`, looked at once, for the base model and the kept round only;
recipes/config.py refuses an eval split that any of the others reads. Like the image demo this is a recipe
run by the engine (recipes/runner.py): `recipes/demo_video.yaml` is the same run (a test keeps them equal).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, write_json

METRICS = ("chair_s", "chair_i", "recall", "mean_len", "n")  # toy_video: CHAIR over the clip
# toy_video_qa: accuracy per kind of question
QA_KINDS = ("order", "order_absent", "still_there", "exists", "exists_partner")


@dataclass
class VideoDemoConfig:
    out: str = "halign_runs/demo_video"
    eval_clips: int = 200  # test clips: scored before alignment and for the kept round only
    # Validation clips: scored every round, what the gate chooses on. 100 left a paired standard error of 2
    # recall points, too coarse for the gate's 3-point tolerance at 95%; 300 give about 1.1 (README).
    val_clips: int = 300
    dpo_clips: int = 400  # clips per round, fresh each round
    k: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 64  # a detailed clip caption is longer than a scene's; 64 covers three tracks
    hallucination_weight: float = 2.0
    pair_strategy: str = "gap"
    min_gap: float = 1.0
    # The image demo's length fixes (judged omission negatives, length-balanced pairs, 3 pairs a prompt):
    # without them every round bought lower CHAIR with recall here too (README).
    sample_num: int = 3
    balance_lengths: bool = True
    omission_negatives: bool = True
    # As the image demo: DPO plus an equally weighted SFT term on the chosen answer, so the model does not
    # learn "stop early" along with "don't name absent partners", and one epoch over each round's pairs. Half
    # the image demo's learning rate: every round here trades recall for CHAIR at about the same rate (the
    # checkpoint names a co-occurrence partner after its mate whether or not it is on screen, and DPO teaches
    # it to name the partner less, present or not), so smaller steps are what lets a round stay within the
    # gate's recall tolerance (README: at 1e-3, with or without a 3x SFT weight, round 1's recall fell 2.1-2.2
    # points, outside it).
    dpo: dict = field(default_factory=lambda: {
        "beta": 0.1, "learning_rate": 5e-4, "num_train_epochs": 1, "per_device_train_batch_size": 16,
        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0],
    })
    checkpoint: dict = field(default_factory=dict)  # ToyVideoCheckpointConfig overrides; {} = the standard one
    rounds: int = 2
    gate: dict = field(default_factory=dict)  # GateRule overrides (recipes/round_gate.py)
    seed: int = 0

    @classmethod
    def quick(cls, out: str) -> "VideoDemoConfig":
        """For tests and smoke checks: the quick checkpoint (seconds to build), a few clips, one round; the
        numbers mean nothing, every stage runs for real."""
        from halign.data_gen.toy_video_checkpoint import QUICK_VIDEO_CHECKPOINT

        return cls(out=out, eval_clips=6, val_clips=6, dpo_clips=8, k=3, max_new_tokens=24, rounds=1,
                   checkpoint=dict(QUICK_VIDEO_CHECKPOINT),
                   dpo={"beta": 0.1, "learning_rate": 1e-3, "num_train_epochs": 1, "per_device_train_batch_size": 8,
                        "loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]})

    def recipe(self) -> dict:
        """The run as a recipe (the keys of recipes/config.py): what the engine executes."""
        clips = {"type": "toy_video", "as": "video"}  # native video: the model's own video inputs
        return {
            "model": "toy_video", "seed": self.seed, "rounds": self.rounds, "toy_checkpoint": dict(self.checkpoint),
            "source": {**clips, "split": "dpo", "n": self.dpo_clips},
            "sample": {"k": self.k, "temperature": self.temperature, "max_new_tokens": self.max_new_tokens},
            # The clip's objects are the shapes its detailed caption names: the grounding judge scores a caption
            # against them as it scores a scene's (a partner named but never on screen is hallucinated).
            "judge": {"name": "grounding", "vocabulary": "toy", "hallucination_weight": self.hallucination_weight},
            "omission_negatives": self.omission_negatives,
            "pairs": {"strategy": self.pair_strategy, "min_gap": self.min_gap, "sample_num": self.sample_num,
                      "balance_lengths": self.balance_lengths},
            "train": {"dpo": dict(self.dpo), "peft": {}},
            "eval": {"source": {**clips, "split": "eval", "n": self.eval_clips}, "benchmark": "toy_video",
                     "max_new_tokens": self.max_new_tokens, "rounds": "kept"},
            "gate": {**self.gate, "val_scenes": self.val_clips},
        }


def run_video_demo(cfg: VideoDemoConfig, progress: bool = True, log=print) -> dict:
    """Run the video demo; returns (and writes to RUN/demo_report.json) the test scores before alignment and
    for the round the gate kept (both metrics), validation scores per round and the gate's decision."""
    import time

    from halign.recipes import config
    from halign.recipes.rounds import round_dirs
    from halign.recipes.runner import run_config

    started = time.time()
    resolved = config.resolve(cfg.recipe())
    result = run_config(resolved, cfg.out, progress=progress, log=log)
    summary = result["summary"]
    test, kept = summary["test"], summary["kept_round"]
    first = round_dirs(resolved, Path(cfg.out))[0] / "eval"
    after_folder = Path(summary["kept_report"]).parent
    qa = {"before": json.loads((first / "qa_before.json").read_text())["metrics"],
          "after": json.loads((after_folder / ("qa_after.json" if kept else "qa_before.json")).read_text())["metrics"]}
    report = {
        "before": {k: test["before"][k] for k in METRICS},
        "after": {k: test["after"][k] for k in METRICS},
        "qa": {side: {k: qa[side][k] for k in ("accuracy", "yes_ratio", *[f"{q}_accuracy" for q in QA_KINDS])
                      if k in qa[side]} for side in ("before", "after")},
        "rounds": summary["validation"],  # validation scores; round 0 = before alignment
        "gate": summary["gate"],
        "kept_round": kept,
        "pairs_per_round": [r["pairs"] for r in summary["validation"][1:]],
        "judge": resolved["judge"],
        "checkpoint": summary["validation"][0]["policy"],
        "trained": summary["kept_policy"],
        "test_n": summary["test_n"],
        "validation_n": summary["validation_n"],
        "wall_seconds": round(time.time() - started, 1),
        "html": str(Path(cfg.out) / "report.html"),
        "config": asdict(cfg),
    }
    write_json(Path(cfg.out) / "demo_report.json", report)
    return report


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    kept, console = report["kept_round"], Console()
    for title, rows in ((f"toy_video: CHAIR over the clip, {report['test_n']} held-out test clips",
                         [(k, report["before"][k], report["after"][k]) for k in METRICS]),
                        ("toy_video_qa: temporal and existence questions on the same clips",
                         [(k, report["qa"]["before"][k], report["qa"]["after"].get(k))
                          for k in report["qa"]["before"]])):
        table = Table(title=f"halign demo --video: {title} (before alignment vs round {kept}, kept by the gate)")
        for col in ("metric", "before", "after", "change"):
            table.add_column(col, justify="right" if col != "metric" else "left")
        for key, b, a in rows:
            fmt = "{:d}" if key == "n" else "{:.3f}"
            change = f"{a / b:.2f}x" if key != "n" and a is not None and b else ""
            table.add_row(key, fmt.format(b), "" if a is None else fmt.format(a), change)
        console.print(table)
    console.print(f"gate: {report['gate']['reason']} ({report['gate']['rule']})")
    console.print(f"pairs per round: {report['pairs_per_round']}  wall time: {report['wall_seconds']:.0f} s")


def plot(report: dict, path: Path) -> Path:
    """Left: test scores before alignment and for the kept round. Right: validation scores per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from halign.recipes.scoring import draw_rounds, save_figure

    bars = [("CHAIR_s", "chair_s", None), ("CHAIR_i", "chair_i", None), ("recall", "recall", None),
            ("question acc.", None, "accuracy"), ("question yes-ratio", None, "yes_ratio")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    ax, xs = axes[0], range(len(bars))
    kept = f"round {report['kept_round']} (kept)"
    for offset, side, label in ((-0.2, "before", "before alignment"), (0.2, "after", kept)):
        values = [report[side][k] if k else report["qa"][side][q] for _, k, q in bars]
        ax.bar([x + offset for x in xs], values, width=0.4, label=label)
    ax.set_xticks(list(xs), [label for label, _, _ in bars], fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_title(f"moving toy world, {report['test_n']} held-out test clips")
    ax.legend(loc="upper left", fontsize=8)
    draw_rounds(axes[1], report["rounds"], chosen=report["kept_round"],
                title=f"validation ({report['validation_n']} other clips) per round")
    return save_figure(fig, path)


def apply_shared_flags(cfg, args: argparse.Namespace):
    """The flags both demos take (seed, rounds, pair settings) onto `cfg`, a DemoConfig or a VideoDemoConfig;
    a flag not given keeps the config's default. Here, not in recipes/demo.py (which adds the flags), because
    demo.py already imports this module: the reverse import would close a cycle."""
    cfg.seed = args.seed
    for name in ("rounds", "sample_num"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
            setattr(cfg, name, value)
    for name in ("omission_negatives", "balance_lengths"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


def main(args: argparse.Namespace) -> int:
    """`halign demo --video` (recipes/demo.py's flags; the image world's own are refused)."""
    image_only = [flag for flag, given in (("--qa-fraction", args.qa_fraction is not None),
                                           ("--no-complete-yes-no", args.no_complete_yes_no)) if given]
    if image_only:
        raise ValueError(f"{image_only[0]} is an image-demo option (toy-world existence questions); "
                         f"the video demo's questions are its clips' own")
    out = args.out or "halign_runs/demo_video"
    cfg = apply_shared_flags(VideoDemoConfig.quick(out) if args.quick else VideoDemoConfig(out=out), args)
    ensure_writable_dir(out)
    if args.json:
        ensure_writable_dir(Path(args.json).parent)
    report = run_video_demo(cfg, progress=not args.no_progress)
    report["plot"] = str(plot(report, Path(args.plot) if args.plot else Path(out) / "demo.png"))
    write_json(Path(out) / "demo_report.json", report)
    if args.json:
        write_json(args.json, report)
    print_table(report)
    print(f"report: {args.json or Path(out) / 'demo_report.json'}  plot: {report['plot']}")
    return 0
