"""Toy-world POPE: a checkpoint's yes/no answers to each scene's existence questions (prompt record key
`pope`: list of {kind, object, question, answer}), scored with POPE's answer parser and formulas.

Every question becomes its own prompt record (the scene's image + the question), so generation stays the
ordinary sampler. Answers are parsed exactly as rewards/pope.py parses POPE answers ("yes" is the positive
class; "no"/"No"/"not" in the first sentence means no) and scored per kind: random, popular, adversarial.
The top-level metrics are the mean over kinds, as `score_pope` reports the mean over splits.
"""

from __future__ import annotations

from halign.rewards.base import match_references
from halign.rewards.pope import parse_pope_answer, pope_metrics

KINDS = ("random", "popular", "adversarial")
KEYS = ("accuracy", "precision", "recall", "f1", "yes_ratio")


def pope_prompts(records: list[dict]) -> list[dict]:
    """One prompt record per POPE question of each scene record: `question` set, image kept, label attached.

    The caption and the ground truth go along unchanged (a judge or a report may want them); the id is
    `{scene id}-pope{j}` so answers can be traced to their scene.
    """
    prompts = []
    for rec in records:
        questions = rec.get("pope")
        if questions is None:
            raise ValueError(f"record {rec.get('id')!r} has no 'pope' questions (toy-world prompt records have)")
        for j, q in enumerate(questions):
            prompts.append({"id": f"{rec['id']}-pope{j}", "scene_id": rec["id"], "images": list(rec.get("images", [])),
                            "question": q["question"], "caption": rec.get("caption", ""),
                            "objects": rec.get("objects", []), "source": rec.get("source", "toy_world"),
                            "kind": q["kind"], "object": q["object"], "label": _label(q["answer"])})
    return prompts


def _label(answer) -> str:
    label = str(answer).strip().lower()
    if label not in ("yes", "no"):
        raise ValueError(f"POPE answer must be 'Yes' or 'No', got {answer!r}")
    return label


def summarize_by_kind(per_item: list[dict], kind_order, kind_metrics, keys) -> dict:
    """`kind_metrics(rows)` per kind (kinds in `kind_order` first, any others after, sorted), the mean of each
    of `keys` over the kinds present, the item count, and flat `{kind}_{key}` copies."""
    kinds = [k for k in kind_order if any(p["kind"] == k for p in per_item)]
    kinds += sorted({p["kind"] for p in per_item} - set(kinds))
    per_kind = {kind: kind_metrics([p for p in per_item if p["kind"] == kind]) for kind in kinds}
    metrics = {k: sum(m[k] for m in per_kind.values()) / len(per_kind) if per_kind else 0.0 for k in keys}
    metrics["n"] = len(per_item)
    # Flat per-kind keys too: report consumers (compare, plots) read numbers from `metrics` only.
    for kind, m in per_kind.items():
        metrics.update({f"{kind}_{k}": m[k] for k in keys})
    return {"metrics": metrics, "kinds": per_kind}


def score_answers(per_item: list[dict]) -> dict:
    """Metrics per kind and their mean from records with `kind`, `prediction` and `label`."""
    return summarize_by_kind(per_item, KINDS, lambda rows: pope_metrics([p["prediction"] for p in rows],
                                                                        [p["label"] for p in rows]), KEYS)


class ToyPopeMetric:
    """`Metric`: responses carry `id` and `text`; references map id -> a record from `pope_prompts`."""

    name = "toy_pope"

    def score(self, responses: list[dict], references: dict[str, dict]) -> dict:
        matched, missing = match_references(responses, references)
        per_item = []
        for resp, ref in matched:
            text = resp.get("text") or ""
            pred = parse_pope_answer(text)
            per_item.append({"id": resp["id"], "scene_id": ref.get("scene_id"), "kind": ref["kind"],
                             "object": ref.get("object"), "question": ref.get("question"), "text": text,
                             "prediction": pred, "label": ref["label"], "correct": pred == ref["label"]})
        return {"benchmark": self.name, **score_answers(per_item), "per_item": per_item, "missing_ids": missing,
                "settings": {"parser": "pope_reference"}}
