"""The HTML report's POPE and judge panels: plain data (lists and dicts) that report.js renders.

POPE: per split (the negative-sampling kind: random / popular / adversarial) the metrics of every report,
and the questions some report answered wrongly, each with every report's answer. Two report shapes are read:
`halign eval --bench pope` (top-level `per_item` with `kind`, `question`, `prediction`, `label`) and
`halign score pope` (`splits` -> {name: {per_item: [question_id, image, prediction, label]}}).

Judge: judgments.jsonl grouped by prompt, each candidate with its score, rationale and hallucinated objects;
with the sampler's candidates.jsonl (and the prompts.jsonl next to it), the candidate text and the prompt.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from halign.data_gen.io import read_records
from halign.rewards.metrics import YES_NO
from halign.rewards.toy_pope import KEYS, score_answers


def is_pope_report(report: dict) -> bool:
    if report.get("item_kind"):  # recorded by the metric registry (rewards/metrics.py)
        return report["item_kind"] == YES_NO
    # An older report: guessed from its keys.
    if "splits" in report and "per_item" not in report:
        return True
    items = report.get("per_item") or []
    return bool(items) and all("prediction" in i and "label" in i for i in items)


def pope_items(report: dict, where: str) -> list[dict]:
    """Normalized POPE answers: id, kind (split), question, object, image, prediction, label, text."""
    if "per_item" in report:
        raw = [(item.get("kind", "all"), item) for item in report["per_item"]]
    elif "splits" in report:
        raw = [(name, dict(item, id=f"{name}-{item['question_id']}"))
               for name, split in report["splits"].items() for item in split.get("per_item", [])]
    else:
        raise ValueError(f"{where}: not a POPE report (no per_item or splits)")
    items = []
    for kind, item in raw:
        for key in ("prediction", "label"):
            if key not in item:
                raise ValueError(f"{where}: POPE item {item.get('id', item.get('question_id'))!r} has no {key!r}")
        items.append({"id": str(item.get("id", item.get("question_id"))), "kind": kind,
                      "question": item.get("question"), "object": item.get("object"),
                      "image": item.get("image"), "prediction": item["prediction"], "label": item["label"],
                      "text": item.get("text")})
    return items


def pope_panel(reports: list[dict], labels: list[str], images) -> dict:
    """Per split and report: metrics; then every question that at least one report answered wrongly."""
    per_report = [pope_items(r, label) for r, label in zip(reports, labels)]
    scored = [score_answers(items) for items in per_report]
    kinds = list(dict.fromkeys(k for s in scored for k in s["kinds"]))
    table = [{"kind": kind, "n": sum(i["kind"] == kind for i in per_report[0]),
              "reports": [{k: s["kinds"].get(kind, {}).get(k) for k in KEYS} for s in scored]}
             for kind in kinds]
    table.append({"kind": "mean over splits", "n": len(per_report[0]),
                  "reports": [{k: s["metrics"][k] for k in KEYS} for s in scored]})
    by_id = [{i["id"]: i for i in items} for items in per_report]
    wrong = []
    for item in per_report[0]:
        answers = [b.get(item["id"]) for b in by_id]
        if all(a is not None and a["prediction"] == a["label"] for a in answers):
            continue
        wrong.append({"id": item["id"], "kind": item["kind"], "q": item["question"], "obj": item["object"],
                      "label": item["label"], "img": images.add(item["image"]),
                      "pred": [a["prediction"] if a else None for a in answers],
                      "text": [a["text"] if a else None for a in answers]})
    return {"labels": labels, "n": len(per_report[0]), "table": table, "keys": list(KEYS), "wrong": wrong}


MAX_JUDGED_PROMPTS = 2000  # the panel is for reading examples; a 100k-call judge run must not swell the page


def judge_panel(judgments_path: str | Path, candidates_path: str | Path | None, images) -> dict:
    """Judgments grouped by prompt (in file order; the first MAX_JUDGED_PROMPTS prompts), with candidate text
    and prompt when candidates are given."""
    judgments = read_records(judgments_path)
    texts, prompts = {}, {}
    if candidates_path:
        texts = {str(c["id"]): c.get("text") for c in read_records(candidates_path)}
        prompts_path = Path(candidates_path).with_name("prompts.jsonl")
        if prompts_path.exists():
            prompts = {str(p["id"]): p for p in read_records(prompts_path)}
    grouped: dict[str, list[dict]] = defaultdict(list)
    for n, j in enumerate(judgments, 1):
        if "prompt_id" not in j or "candidate_id" not in j:
            raise ValueError(f"{judgments_path}: record {n} lacks prompt_id / candidate_id (not a judgments file)")
        grouped[str(j["prompt_id"])].append({
            "cid": str(j["candidate_id"]), "score": j.get("score"), "rat": j.get("rationale") or "",
            "hal": j.get("hallucinated") or [], "err": j.get("error"), "text": texts.get(str(j["candidate_id"]))})
    out = []
    for pid, cands in list(grouped.items())[:MAX_JUDGED_PROMPTS]:
        prompt = prompts.get(pid, {})
        image = (prompt.get("images") or [None])[0]
        out.append({"pid": pid, "q": prompt.get("question"), "img": images.add(image), "cands": cands})
    return {"path": str(judgments_path), "judge": judgments[0].get("judge") if judgments else None,
            "n": len(judgments), "n_prompts": len(grouped), "prompts": out}


def pope_plot(panel: dict) -> bytes:
    """PNG: accuracy and F1 per split, one bar per report."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, labels = panel["table"], panel["labels"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    width = 0.8 / len(labels)
    for ax, key in zip(axes, ("accuracy", "f1")):
        for j, label in enumerate(labels):
            xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(rows))]
            values = [row["reports"][j][key] or 0.0 for row in rows]
            ax.bar(xs, values, width=width, label=label)
            for x, v in zip(xs, values):
                ax.annotate(f"{v:.3f}", (x, v), ha="center", va="bottom", fontsize=6, rotation=90,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(range(len(rows)), [row["kind"] for row in rows], fontsize=8)
        ax.set_ylim(0, 1.25)
        ax.set_title(f"POPE {key} per split", fontsize=9)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
