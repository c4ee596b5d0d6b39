"""`grounding` judge: offline and free AI-feedback stand-in.

Compares the objects a response mentions with the ground-truth objects of its prompt (the toy world's
exact objects, or COCO's annotated ones), reusing the scorer's mention extraction. The score rewards
coverage and punishes hallucination:  score = covered - hallucination_weight * hallucinated.
A weight above 1 matters: with 1, dropping a true object costs as much as dropping a hallucinated one,
and preference pairs then teach the model to say less rather than to say only what it sees.
"""

from __future__ import annotations

import json
from pathlib import Path

from halign.rewards.object_hallucination import ObjectVocabulary, score_item


def load_vocabulary(spec: dict[str, list[str]] | str) -> dict[str, list[str]]:
    """'toy' -> the toy world's objects; a path -> a JSON object {category: [words]}; a dict as is."""
    if isinstance(spec, dict):
        return spec
    if spec == "toy":
        from halign.data_gen.toy_world import ToyWorldConfig

        return ToyWorldConfig().vocabulary()
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"grounding judge: vocabulary must be 'toy' or a JSON file, got {spec!r}")
    try:
        vocab = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"grounding judge: {path} is not valid JSON ({err.msg})") from None
    if not isinstance(vocab, dict) or not all(isinstance(v, list) for v in vocab.values()):
        raise ValueError(f"grounding judge: {path} must hold an object {{category: [words]}}")
    return vocab


class GroundingJudge:
    name = "grounding"

    def __init__(self, vocabulary: dict[str, list[str]] | str = "toy", hallucination_weight: float = 2.0,
                 objects_key: str = "objects"):
        self.vocabulary_source = vocabulary if isinstance(vocabulary, str) else "inline"
        self.vocab = ObjectVocabulary.from_categories(load_vocabulary(vocabulary))
        self.hallucination_weight = float(hallucination_weight)
        self.objects_key = objects_key

    def config(self) -> dict:
        return {"judge": self.name, "hallucination_weight": self.hallucination_weight,
                "objects_key": self.objects_key, "vocabulary": self.vocabulary_source}

    def judge(self, candidates: list[dict], prompts: dict[str, dict]) -> list[dict]:
        judgments = []
        for cand in candidates:
            base = {"candidate_id": cand["id"], "prompt_id": cand["prompt_id"], "judge": self.name,
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "cached": False}
            prompt = prompts.get(cand["prompt_id"])
            if prompt is None or self.objects_key not in prompt:
                reason = "unknown prompt_id" if prompt is None else f"prompt has no {self.objects_key!r}"
                judgments.append({**base, "score": None, "claims": [], "hallucinated": [], "rationale": "",
                                  "error": f"{reason}: {cand['prompt_id']!r}"})
                continue
            item = score_item(cand.get("text", ""), prompt[self.objects_key], self.vocab)
            hallucinated = item["hallucinated"]
            covered = item["covered"]
            claims = [{"text": m, "verdict": m not in hallucinated} for m in dict.fromkeys(item["mentions"])]
            score = len(covered) - self.hallucination_weight * len(hallucinated)
            judgments.append({
                **base, "score": float(score), "claims": claims, "hallucinated": hallucinated,
                "covered": covered, "error": None,
                "rationale": f"covers {len(covered)}/{len(item['ground_truth'])} objects, "
                             f"{len(hallucinated)} hallucinated mention(s)",
            })
        return judgments
