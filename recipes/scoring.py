"""Scoring a policy on a set of records, and the per-round plot: what the eval and validation steps of the
engine (recipes/runner.py) write and read.

A policy is scored on captions with the eval section's metric and, where every record carries yes/no
questions, on them as well (max 4 new tokens): toy POPE for toy-world scenes (`pope`), the temporal and
existence questions (toy_video_qa) for moving-toy-world clips (`questions`). Flat metrics (`flat_metrics`) are
what the gate and the round tables read: the caption summary plus `pope_*`, or `qa_*` for the clips.
"""

from __future__ import annotations

import json
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, write_json
from halign.recipes.round_gate import CAPTION_KEYS, POPE_KEYS


def score_policy(policy: str, records: list[dict], metric, label: str, progress: bool, max_new_tokens: int = 64,
                 batch_size: int = 64) -> tuple[dict, dict | None]:
    """(caption report, yes/no report or None) of `policy` on `records`, generated greedily: the yes/no
    report is toy POPE's for toy scenes, toy_video_qa's for toy clips (`yes_no_name` tells them apart)."""
    from halign.align.model import load_policy
    from halign.recipes.evaluate import evaluate, pope_metric
    from halign.rewards.metrics import metric_spec
    from halign.rewards.toy_pope import pope_prompts
    from halign.rewards.toy_video_metrics import question_prompts

    model, processor = load_policy(policy)
    captions = evaluate(model, processor, records, metric, policy, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, desc=f"scoring {label}")
    pope = None
    if records and all(r.get("pope") for r in records):
        pope = evaluate(model, processor, pope_prompts(records), pope_metric(), policy, max_new_tokens=4,
                        batch_size=batch_size, progress=progress, desc=f"POPE {label}")
    elif records and all(r.get("questions") and r.get("video") for r in records):  # toy clips
        pope = evaluate(model, processor, question_prompts(records), metric_spec("toy_video_qa").build(), policy,
                        max_new_tokens=4, batch_size=batch_size, progress=progress, desc=f"clip questions {label}")
    return captions, pope


# The yes/no report's name (its files: `<name>_<side>.json`, `<name>.json`; its flat metrics: `<name>_<key>`)
# by its benchmark: toy POPE on scenes, the clip questions on toy clips.
YES_NO_NAMES = {"toy_pope": "pope", "toy_video_qa": "qa"}
QA_KEYS = ("accuracy", "yes_ratio")  # the clip questions' flat metrics (mean over question kinds)


def yes_no_name(report: dict) -> str:
    return YES_NO_NAMES[report["benchmark"]]


def flat_metrics(captions: dict, pope: dict | None) -> dict:
    """The caption summary (CHAIR_s, CHAIR_i, recall, mean length, n) and POPE's as `pope_<key>`."""
    metrics = {k: captions["metrics"][k] for k in CAPTION_KEYS if k != "n"} | {"n": captions["n"]}
    if pope is not None:
        name = yes_no_name(pope)
        metrics |= {f"{name}_{k}": pope["metrics"][k] for k in (POPE_KEYS if name == "pope" else QA_KEYS)}
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


def score_into(folder: Path, policy: str, records: list[dict], metric, label: str, progress: bool,
               **kwargs) -> dict:
    """Score and write `report.json` (and `pope.json`) in folder; returns the flat metrics."""
    captions, pope = score_policy(policy, records, metric, label, progress, **kwargs)
    write_json(ensure_writable_dir(folder) / "report.json", captions)
    if pope is not None:
        write_json(folder / f"{yes_no_name(pope)}.json", pope)
    return flat_metrics(captions, pope)


# --- the rounds plot -------------------------------------------------------------------------------

ROUND_CURVES = (("chair_s", "CHAIR_s"), ("chair_i", "CHAIR_i"), ("recall", "recall"),
                ("pope_accuracy", "POPE accuracy"), ("pope_yes_ratio", "POPE yes-ratio"),
                ("qa_accuracy", "clip-question accuracy"), ("qa_yes_ratio", "clip-question yes-ratio"))


def draw_rounds(ax, history: list[dict], chosen: int | None = None, title: str = "validation scores per round") -> None:
    """Hallucination (CHAIR), recall and, where scored, POPE against the round number; the kept round marked."""
    rounds = [h["round"] for h in history]
    for key, label in ROUND_CURVES:
        if all(key in h for h in history):
            ax.plot(rounds, [h[key] for h in history], marker="o", label=label,
                    linestyle="--" if key.endswith("yes_ratio") else "-")
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
