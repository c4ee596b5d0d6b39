"""`halign rlaif`: iterative RLAIF (RLAIF-V's multi-round loop) that keeps the best round, not the last.

Each round samples with the *current* policy (on-policy data), judges, builds pairs, trains DPO against
the current policy as reference, merges LoRA into a standalone checkpoint for the next round, and scores
the new policy on a **validation** split. After the last round the gate (recipes/round_gate.py) picks the
round to keep by a declared rule, and only then are the model before alignment and the kept policy scored
on the **test** split, which no earlier decision looked at.

Layout: `OUT/round0/` (the starting model's validation scores), `OUT/round{r}/` (prompts, sample, judge,
pairs, train, policy, validation scores, done.json), `OUT/test/` (final reports), `OUT/rlaif_report.json`
and `OUT/rlaif.png`. A round ends with `done.json`; a restarted run skips finished rounds and goes on from
the last one. Fresh prompts each round (round r takes slice r of the prompt stream; with a prompts file
too) keep the policy from over-fitting one set of images.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, read_records, write_json, write_jsonl
from halign.data_gen.toy_world import TOY_QA_FRACTION
from halign.recipes.round_gate import CAPTION_KEYS, POPE_KEYS, GateRule, choose_round, format_history


@dataclass
class RlaifConfig:
    model: str  # checkpoint folder, or "toy" for the toy-world checkpoint (seeded with `seed`)
    out: str = "halign_runs/rlaif"
    rounds: int = 3
    prompts: str | None = None  # prompt records (JSONL); None = the toy world's "dpo" split
    prompts_per_round: int = 600
    # Fraction of each round's toy-world prompts that ask a yes/no existence question instead of a caption,
    # so the short-answer skill is trained too (data_gen/toy_world.mix_existence_questions). None: the
    # measured TOY_QA_FRACTION on toy-world prompts, 0 with a prompts file (it brings its own questions).
    qa_fraction: float | None = None
    eval_prompts: str | None = None  # test records with ground-truth `objects`; None = toy world held-out scenes
    eval_n: int = 300
    val_prompts: str | None = None  # validation records for the gate (disjoint from the test records)
    val_n: int = 200  # toy world: validation scenes
    gate: dict = field(default_factory=dict)  # GateRule overrides (metric, recall_tolerance, pope_tolerance)
    toy_checkpoint: dict = field(default_factory=dict)  # ToyCheckpointConfig overrides with model "toy"
    vocabulary: str = "toy"  # object vocabulary for evaluation ('toy' or a JSON file)
    # complete_yes_no: yes/no prompts get the unsampled answer as a candidate too (data_gen/sample.py)
    sample: dict = field(default_factory=lambda: {"k": 8, "temperature": 1.0, "complete_yes_no": True})
    judge: str = "grounding"
    judge_options: dict = field(default_factory=lambda: {"vocabulary": "toy", "hallucination_weight": 2.0})
    pairs: dict = field(default_factory=lambda: {"strategy": "gap", "min_gap": 1.0, "sample_num": 2})
    # Judged omission negatives (data_gen/omissions.py): a clean answer minus its last item, so that
    # stopping early is punished as well as hallucinating.
    omission_negatives: bool = False
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
        if (self.eval_prompts is None) != (self.val_prompts is None):
            raise ValueError("give both eval_prompts (test) and val_prompts (validation), or neither (toy world)")
        self.gate_rule()  # validates the overrides

    def gate_rule(self) -> GateRule:
        unknown = set(self.gate) - set(GateRule.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown gate keys {sorted(unknown)}; known: {sorted(GateRule.__dataclass_fields__)}")
        return GateRule(**self.gate)

    def toy_checkpoint_config(self):
        from halign.data_gen.toy_checkpoint import ToyCheckpointConfig
        from halign.data_gen.toy_world import ToyWorldConfig

        # As `halign demo` and `halign run`: one seed seeds the world, the checkpoint and the alignment.
        return ToyCheckpointConfig(world=ToyWorldConfig(seed=self.seed), seed=self.seed, **self.toy_checkpoint)


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


def eval_sets(cfg: RlaifConfig, out: Path) -> tuple[list[dict], list[dict]]:
    """(test, validation) records. Toy world: test scenes held out from the SFT and every round's prompts;
    validation scenes held out from those and from the test scenes."""
    if cfg.eval_prompts is not None:
        test, val = read_records(cfg.eval_prompts), read_records(cfg.val_prompts)
        shared = {r["id"] for r in test} & {r["id"] for r in val}
        if shared:
            raise ValueError(f"validation and test records share ids (e.g. {sorted(shared)[0]!r}): the gate would "
                             f"choose on test data")
        return test, val
    from halign.data_gen import toy_world
    from halign.recipes.round_gate import toy_validation_prompts

    world = toy_world.ToyWorldConfig(seed=cfg.seed)
    seen = toy_world.signatures(world, "sft", cfg.toy_checkpoint_config().sft_scenes)
    seen |= toy_world.signatures(world, "dpo", cfg.rounds * cfg.prompts_per_round)
    test = toy_world.write_prompts(world, "eval", cfg.eval_n, out / "eval_world", exclude=seen)
    val = toy_validation_prompts(world, cfg.val_n, out / "val_world", seen, test)
    return test, val


def score(policy: str, records: list[dict], metric, folder: Path, label: str, progress: bool) -> dict:
    """Captions scored with `metric` (object hallucination) and, where the records carry yes/no questions, toy
    POPE; reports written under `folder`, flat metrics returned (POPE keys prefixed `pope_`)."""
    from halign.align.model import load_policy
    from halign.recipes.evaluate import evaluate, pope_metric
    from halign.rewards.toy_pope import pope_prompts

    model, processor = load_policy(policy)
    captions = evaluate(model, processor, records, metric, policy, progress=progress, desc=f"scoring {label}")
    write_json(ensure_writable_dir(folder) / "report.json", captions)
    metrics = {k: captions["metrics"][k] for k in CAPTION_KEYS if k != "n"} | {"n": captions["n"]}
    if all(r.get("pope") for r in records):
        pope = evaluate(model, processor, pope_prompts(records), pope_metric(), policy, max_new_tokens=4,
                        progress=progress, desc=f"POPE {label}")
        write_json(folder / "pope.json", pope)
        metrics |= {f"pope_{k}": pope["metrics"][k] for k in POPE_KEYS}
    return metrics


def cached_scores(folder: Path, identity, compute) -> dict:
    """`compute()`'s metrics, reused when `folder/scores.json` was written for the same identity (a resumed
    run); what identifies a score: the policy, and whatever else decides it."""
    done = folder / "scores.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if saved.get("identity") == identity:
            return saved["metrics"]
    metrics = compute()
    write_json(ensure_writable_dir(folder) / "scores.json", {"identity": identity, "metrics": metrics})
    return metrics


def object_metric(cfg: RlaifConfig):
    from halign.rewards.object_hallucination import ObjectHallucinationMetric
    from halign.rewards.vocabulary import load_vocabulary

    return ObjectHallucinationMetric(load_vocabulary(cfg.vocabulary))


def _scored(policy: str, records: list[dict], cfg: RlaifConfig, folder: Path, label: str, progress: bool) -> dict:
    return cached_scores(folder, policy, lambda: score(policy, records, object_metric(cfg), folder, label, progress))


def run_round(cfg: RlaifConfig, r: int, policy: str, folder: Path, progress: bool) -> tuple[str, dict]:
    """Round r (0-based): returns the new policy checkpoint and the pairs summary."""
    from halign.align.dpo import TrainConfig, train
    from halign.align.export import merge_adapter
    from halign.data_gen.pairs import PairsConfig
    from halign.data_gen.pairs import run as run_pairs
    from halign.data_gen.sample import SampleConfig
    from halign.data_gen.sample import run as sample
    from halign.rewards.judges.cli import run_judge

    prompts = _round_prompts(cfg, r, folder)
    sample_cfg = SampleConfig(model=policy, **{"seed": cfg.seed + r, **cfg.sample})
    candidates = sample(sample_cfg, prompts, folder / "sample", progress=progress)
    judgments, _, _ = run_judge(cfg.judge, candidates, folder / "judge" / "judgments.jsonl",
                                options=dict(cfg.judge_options), progress=progress)
    if cfg.omission_negatives:
        candidates, judgments = add_omission_negatives(cfg, candidates, judgments, folder / "omissions", progress)
    pairs = run_pairs(PairsConfig(**{"seed": cfg.seed + r, **cfg.pairs}), judgments, candidates,
                      folder / "sample" / "prompts.jsonl", folder / "pairs")
    summary = json.loads((folder / "pairs" / "summary.json").read_text())
    trained = train(TrainConfig(model=policy, pairs=str(pairs), output_dir=str(folder / "train"),
                                dpo={**cfg.dpo, "seed": cfg.seed + r}, peft=cfg.peft), progress=progress)
    if cfg.peft is None:
        return str(trained), summary
    return str(merge_adapter(trained, folder / "policy")), summary


def add_omission_negatives(cfg: RlaifConfig, candidates: Path, judgments: Path, folder: Path,
                           progress: bool) -> tuple[Path, Path]:
    """Judge omission copies of the round's clean answers (data_gen/omissions.py); returns the candidate and
    judgment files with them added, for the pairs stage."""
    import shutil

    from halign.data_gen.omissions import omission_candidates
    from halign.rewards.judges.cli import run_judge

    folder = ensure_writable_dir(folder)
    sampled, judged = read_records(candidates), read_records(judgments)
    copies = omission_candidates(sampled, judged)
    if not copies:
        return candidates, judgments
    write_jsonl(folder / "candidates.jsonl", copies)
    shutil.copy(Path(candidates).parent / "prompts.jsonl", folder / "prompts.jsonl")  # the judge reads it there
    extra, _, _ = run_judge(cfg.judge, folder / "candidates.jsonl", folder / "judgments.jsonl",
                            options=dict(cfg.judge_options), progress=progress)
    write_jsonl(folder / "all_candidates.jsonl", sampled + read_records(folder / "candidates.jsonl"))
    write_jsonl(folder / "all_judgments.jsonl", judged + read_records(extra))
    return folder / "all_candidates.jsonl", folder / "all_judgments.jsonl"


def run_rlaif(cfg: RlaifConfig, progress: bool = True, log=print) -> dict:
    started = time.time()
    out = ensure_writable_dir(cfg.out)
    write_json(out / "config.json", asdict(cfg))
    base = _resolve_model(cfg, log)
    test, val = eval_sets(cfg, out)
    rule = cfg.gate_rule()
    history = [{"round": 0, "policy": base, **_scored(base, val, cfg, out / "round0", "round 0 (validation)",
                                                       progress)}]
    policy = base
    for r in range(cfg.rounds):
        folder = out / f"round{r + 1}"
        done = folder / "done.json"
        if done.exists():
            entry = json.loads(done.read_text())
            log(f"round {r + 1}: already finished, policy {entry['policy']}")
        else:
            t0 = time.time()
            log(f"round {r + 1}/{cfg.rounds}: sample, judge, pairs, train from {policy}")
            new_policy, pairs = run_round(cfg, r, policy, ensure_writable_dir(folder), progress)
            metrics = score(new_policy, val, object_metric(cfg), folder / "validation", f"round {r + 1} (validation)",
                            progress)
            entry = {"round": r + 1, "policy": new_policy, "pairs": pairs["pairs"],
                     "seconds": round(time.time() - t0, 1), **metrics}
            write_json(done, entry)  # written last: a round without it is redone from scratch
        history.append(entry)
        policy = entry["policy"]
    gate = choose_round(history, rule)
    write_json(out / "history.json", history)
    for line in format_history(history, gate["chosen_round"]):
        log("validation " + line)
    log(f"gate: {gate['reason']}")
    chosen = history[gate["chosen_round"]]
    test_scores = {"before": _scored(base, test, cfg, out / "test" / "round0", "test, before", progress),
                   "after": _scored(chosen["policy"], test, cfg, out / "test" / f"round{chosen['round']}",
                                    f"test, round {chosen['round']}", progress)}
    summary = {"rounds": history, "gate": gate, "final_policy": chosen["policy"], "last_policy": policy,
               "test": test_scores, "test_n": len(test), "validation_n": len(val),
               "wall_seconds": round(time.time() - started, 1)}
    write_json(out / "rlaif_report.json", summary)
    plot_rounds(history, out / "rlaif.png", chosen=gate["chosen_round"])
    return summary


def _resolve_model(cfg: RlaifConfig, log) -> str:
    if cfg.model == "toy":
        from halign.data_gen.toy_checkpoint import get_toy_checkpoint

        return str(get_toy_checkpoint(cfg.toy_checkpoint_config(), log=log))
    return cfg.model


ROUND_CURVES = (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall"),
                ("pope_accuracy", "POPE accuracy"), ("pope_yes_ratio", "POPE yes-ratio"))


def draw_rounds(ax, history: list[dict], chosen: int | None = None, title: str = "validation scores per round") -> None:
    """Hallucination (CHAIR), recall and, where scored, POPE against the round number; the kept round marked."""
    rounds = [h["round"] for h in history]
    for key, label in ROUND_CURVES:
        if all(key in h for h in history):
            ax.plot(rounds, [h[key] for h in history], marker="o", label=label,
                    linestyle="--" if key == "pope_yes_ratio" else "-")
    if chosen is not None:
        ax.axvline(chosen, color="grey", alpha=0.4, linewidth=6)
        align = "right" if chosen == rounds[-1] else "left" if chosen == rounds[0] else "center"
        ax.text(chosen, 0.7, f"kept: round {chosen} ", ha=align, fontsize=8)
    ax.set_xticks(rounds)
    ax.set_xlabel("RLAIF round (0 = before alignment)")
    ax.set_ylim(0, 1.08)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax.set_title(title)


def plot_rounds(history: list[dict], path: Path, chosen: int | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    draw_rounds(ax, history, chosen)
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

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
    parser.add_argument("--eval-prompts", help="test records with ground-truth objects (default: toy world)")
    parser.add_argument("--val-prompts", help="validation records for choosing the round (needed with --eval-prompts)")
    parser.add_argument("--eval-n", type=int, default=300)
    parser.add_argument("--val-n", type=int, default=200)
    parser.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                        help="gate rule: metric=chair_i|chair_s, recall_tolerance=0.03, pope_tolerance=0.01")
    parser.add_argument("--full", action="store_true", help="full-parameter training instead of LoRA")
    parser.add_argument("--omission-negatives", action="store_true",
                        help="also judge each clean answer minus its last item (data_gen/omissions.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def parse_gate(options: list[str]) -> dict:
    gate = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise ValueError(f"--gate expects KEY=VALUE, got {option!r}")
        gate[key] = value if key == "metric" else float(value)
    return gate


def main(args: argparse.Namespace) -> int:
    cfg = RlaifConfig(model=args.model, out=args.out, rounds=args.rounds, prompts=args.prompts,
                      prompts_per_round=args.prompts_per_round, qa_fraction=args.qa_fraction,
                      eval_prompts=args.eval_prompts, val_prompts=args.val_prompts, eval_n=args.eval_n,
                      val_n=args.val_n, gate=parse_gate(args.gate), peft=None if args.full else {}, seed=args.seed,
                      omission_negatives=args.omission_negatives)
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
    print(f"report: {Path(args.out) / 'rlaif_report.json'}  plot: {Path(args.out) / 'rlaif.png'}")
    return 0
