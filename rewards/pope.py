"""POPE (Li et al., 2023): polling-based object probing, "Is there a {obj} in the image?" -> yes / no.

Question building follows the reference `utils.py`: per image, the first `n` ground-truth objects are the
positives and each positive is followed by one negative, drawn

- `random`: uniformly from all objects that are in no position to be true for this image;
- `popular`: the most frequent objects over the whole ground truth, first one not in the image;
- `adversarial`: the objects that co-occur most often with that positive, first one not in the image;
falling back to a random object when a ranked list runs out. Images with fewer than `n` objects are skipped
(the reference assumes they were filtered beforehand). The article becomes "an" before a vowel.

Answers are parsed as the reference `evaluate.py` does: keep the text before the first ".", drop commas,
split on spaces; the answer is "no" if one of the words is exactly "No", "no" or "not", else "yes". So
"There isn't" and an empty answer both count as "yes", as in the published numbers. "yes" is the positive
class. Ratios with an empty denominator are 0.0 instead of the reference's ZeroDivisionError.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Iterable

TEMPLATE = "Is there a {obj} in the image?"
STRATEGIES = ("random", "popular", "adversarial")
ANSWER_KEYS = ("answer", "text", "response", "output", "prediction")
_NEGATION_WORDS = frozenset({"No", "no", "not"})


# ---------------------------------------------------------------- question building
def question_text(obj: str, template: str = TEMPLATE) -> str:
    text = template.format(obj=obj)
    if obj[:1].lower() in "aeiou":
        text = text.replace(f" a {obj}", f" an {obj}", 1)
    return text


def object_frequencies(images: list[dict]) -> list[str]:
    """All objects, most frequent first (ties keep first-seen order, as the reference's stable sort)."""
    counts = Counter(o for image in images for o in image["objects"])
    return [o for o, _ in sorted(counts.items(), key=lambda kv: kv[1], reverse=True)]


def co_occurrence(images: list[dict]) -> dict[str, list[str]]:
    """For each object, the objects seen in the same image, most often first."""
    counts: dict[str, Counter] = {}
    for image in images:
        for o in image["objects"]:
            row = counts.setdefault(o, Counter())
            for other in image["objects"]:
                if other != o:
                    row[other] += 1
    return {o: [x for x, _ in sorted(row.items(), key=lambda kv: kv[1], reverse=True)]
            for o, row in counts.items()}


def _as_images(gt: dict[str, list[str]] | list[dict]) -> list[dict]:
    if isinstance(gt, dict):
        return [{"image": k, "objects": list(v)} for k, v in gt.items()]
    return [{"image": r.get("image", r.get("image_id")), "objects": list(r["objects"])} for r in gt]


def build_pope_questions(gt: dict[str, list[str]] | list[dict], strategy: str = "random", n: int = 3,
                         seed: int = 0, template: str = TEMPLATE) -> list[dict]:
    """POPE questions (`question_id`, `image`, `text`, `label`, `object`) for every image with >= n objects."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown POPE strategy {strategy!r}; choose one of {list(STRATEGIES)}")
    images = _as_images(gt)
    rng = random.Random(seed)
    all_objects = object_frequencies(images)
    popular = all_objects
    cooc = co_occurrence(images) if strategy == "adversarial" else {}
    questions: list[dict] = []

    def add(image, obj, label):
        questions.append({"question_id": len(questions) + 1, "image": image, "text": question_text(obj, template),
                          "label": label, "object": obj})

    for image in images:
        present = set(image["objects"])
        if len(image["objects"]) < n:
            continue
        if len(present) + n > len(all_objects):
            raise ValueError(f"image {image['image']!r}: not enough absent objects to draw {n} negatives")
        used: set[str] = set()
        for pos in image["objects"][:n]:
            used.add(pos)
            add(image["image"], pos, "yes")
            ranked = popular if strategy == "popular" else cooc.get(pos, []) if strategy == "adversarial" else []
            neg = next((o for o in ranked if o not in used and o not in present), None)
            while neg is None:  # random strategy, or the ranked list ran out
                candidate = rng.choice(all_objects)
                if candidate not in used and candidate not in present:
                    neg = candidate
            used.add(neg)
            add(image["image"], neg, "no")
    return questions


# ---------------------------------------------------------------- answers and metrics
def parse_pope_answer(text: str | None) -> str:
    """'yes' or 'no' by the reference rules (first sentence, words 'No'/'no'/'not' mean no)."""
    text = text or ""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if _NEGATION_WORDS.intersection(words) else "yes"


def _label(value) -> str:
    if isinstance(value, bool) or isinstance(value, int):
        return "yes" if value else "no"
    label = str(value).strip().lower()
    if label not in ("yes", "no"):
        raise ValueError(f"POPE label must be 'yes' or 'no', got {value!r}")
    return label


def pope_metrics(predictions: Iterable[str], labels: Iterable[str]) -> dict:
    """Accuracy, precision, recall, F1 ("yes" positive) and yes-ratio, with the confusion counts."""
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels, strict=True):
        if pred == "yes":
            tp += label == "yes"
            fp += label == "no"
        else:
            tn += label == "no"
            fn += label == "yes"
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": n,
    }


def _answer_text(rec: dict, answer_key: str | None) -> str:
    if answer_key:
        if answer_key not in rec:
            raise ValueError(f"answer record has no {answer_key!r} key (keys: {sorted(rec)})")
        return rec[answer_key] or ""
    for key in ANSWER_KEYS:
        if key in rec:
            return rec[key] or ""
    raise ValueError(f"answer record has none of the keys {list(ANSWER_KEYS)} (keys: {sorted(rec)}); "
                     f"set --answer-key")


def score_pope_split(questions: list[dict], answers: list[dict], answer_key: str | None = None) -> dict:
    """Metrics for one split. Answers match questions by `question_id` when every answer has one, else by
    order (then both files must have the same length). Unknown ids go to `missing_ids`."""
    by_id = {q["question_id"]: q for q in questions if "question_id" in q}
    keyed = bool(answers) and all("question_id" in a for a in answers) and len(by_id) == len(questions)
    if not keyed and len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions and no question_id in the "
                         f"answers to match them")
    pairs, missing, per_item = [], [], []
    for i, ans in enumerate(answers):
        question = by_id.get(ans["question_id"]) if keyed else questions[i]
        if question is None:
            missing.append(ans["question_id"])
            continue
        pred, label = parse_pope_answer(_answer_text(ans, answer_key)), _label(question["label"])
        pairs.append((pred, label))
        per_item.append({"question_id": question.get("question_id", i + 1), "image": question.get("image"),
                         "prediction": pred, "label": label})
    answered = {p["question_id"] for p in per_item}
    unanswered = [q["question_id"] for q in questions if keyed and q["question_id"] not in answered]
    report = pope_metrics([p for p, _ in pairs], [lab for _, lab in pairs])
    report.update({"n_missing": len(missing), "missing_ids": missing, "n_unanswered": len(unanswered),
                   "unanswered_ids": unanswered, "per_item": per_item})
    return report


def split_name(path: str | Path) -> str:
    stem = Path(path).stem
    return next((s for s in STRATEGIES if s in stem), stem)


def score_pope(splits: dict[str, tuple[list[dict], list[dict]]], answer_key: str | None = None) -> dict:
    """Score several splits ({name: (questions, answers)}); top-level metrics are the mean over splits."""
    per_split = {name: score_pope_split(q, a, answer_key) for name, (q, a) in splits.items()}
    keys = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    mean = {k: sum(r[k] for r in per_split.values()) / len(per_split) for k in keys} if per_split else {}
    return {"benchmark": "pope", **mean, "n": sum(r["n"] for r in per_split.values()), "metrics": dict(mean),
            "splits": per_split,
            "n_missing": sum(r["n_missing"] for r in per_split.values()),
            "missing_ids": {k: r["missing_ids"] for k, r in per_split.items() if r["missing_ids"]}}


class PopeMetric:
    """`Metric` protocol: responses carry `question_id` + an answer; references map question_id -> question."""

    name = "pope"

    def __init__(self, answer_key: str | None = None):
        self.answer_key = answer_key

    def score(self, responses: list[dict], references: dict) -> dict:
        questions = [dict(q, question_id=k) for k, q in references.items()]
        return score_pope_split(questions, responses, self.answer_key)
