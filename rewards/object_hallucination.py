"""Object-level hallucination against exact ground truth (CHAIR-style), for any vocabulary.

Used for the toy world (where the ground truth is exact, so the score is too) and by the offline
grounding judge. A vocabulary maps each object category to the words that mention it; a response's
mentions are those words in order, counted with repetition as CHAIR_i does:
  CHAIR_i = hallucinated mentions / all mentions
  CHAIR_s = responses with >= 1 hallucinated mention / responses
  recall  = ground-truth categories mentioned / ground-truth categories (summed over items)
Negation is not parsed ("no circle" still mentions a circle), exactly as CHAIR does on COCO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from halign.rewards.base import match_references

WORD_RE = re.compile(r"[a-z]+(?:[-'][a-z]+)*")


@dataclass(frozen=True)
class ObjectVocabulary:
    """Word -> category lookup. Multi-word synonyms are not needed for the toy world and not supported."""

    word_to_category: dict[str, str]

    @classmethod
    def from_categories(cls, categories: dict[str, list[str]]) -> "ObjectVocabulary":
        mapping: dict[str, str] = {}
        for category, words in categories.items():
            for word in [category, *words]:
                word = word.lower()
                if mapping.get(word, category) != category:
                    raise ValueError(f"vocabulary: word {word!r} maps to both {mapping[word]!r} and {category!r}")
                mapping[word] = category
        return cls(mapping)

    def mentions(self, text: str) -> list[str]:
        """Categories mentioned in `text`, in order, with repetition."""
        return [category for _, category in self.mention_words(text)]

    def mention_words(self, text: str) -> list[tuple[str, str]]:
        """(word as written, lowercased; its category) for each mention in `text`, in order."""
        lookup = self.word_to_category
        return [(w, lookup[w]) for w in WORD_RE.findall(text.lower()) if w in lookup]


def score_item(text: str, ground_truth: list[str], vocab: ObjectVocabulary) -> dict:
    pairs = vocab.mention_words(text or "")
    mentioned = [category for _, category in pairs]
    gt = set(ground_truth)
    hallucinated = [m for m in mentioned if m not in gt]
    covered = sorted(gt & set(mentioned))
    return {
        "mentions": mentioned,
        # The words matched, parallel to `mentions` (as CHAIR's `mentioned_words`): what a report highlights.
        "mentioned_words": [word for word, _ in pairs],
        "hallucinated": hallucinated,
        "covered": covered,
        "ground_truth": sorted(gt),
        "n_words": len(WORD_RE.findall((text or "").lower())),
    }


def aggregate(items: list[dict]) -> dict:
    """CHAIR_s, CHAIR_i, recall and mean length from per-item results of `score_item`."""
    n = len(items)
    mentions = sum(len(i["mentions"]) for i in items)
    hallucinated = sum(len(i["hallucinated"]) for i in items)
    gt_total = sum(len(i["ground_truth"]) for i in items)
    return {
        "chair_s": sum(bool(i["hallucinated"]) for i in items) / n if n else 0.0,
        "chair_i": hallucinated / mentions if mentions else 0.0,
        "recall": sum(len(i["covered"]) for i in items) / gt_total if gt_total else 0.0,
        "mean_len": sum(i["n_words"] for i in items) / n if n else 0.0,
        "n": n,
    }


class ObjectHallucinationMetric:
    """`Metric`: responses carry `id` and `text`; references map id -> record with `objects`."""

    name = "object_chair"

    def __init__(self, vocabulary: dict[str, list[str]]):
        self.vocab = ObjectVocabulary.from_categories(vocabulary)

    def score(self, responses: list[dict], references: dict[str, dict]) -> dict:
        matched, missing = match_references(responses, references)
        per_item = []
        for resp, ref in matched:
            per_item.append({"id": resp["id"], "text": resp.get("text", ""),
                             **score_item(resp.get("text", ""), ref.get("objects", []), self.vocab)})
        return {"benchmark": self.name, "metrics": aggregate(per_item), "per_item": per_item,
                "missing_ids": missing}
