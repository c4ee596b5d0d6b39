"""`grounding` judge: offline and free AI-feedback stand-in.

Compares the objects a response mentions with the ground-truth objects of its prompt (the toy world's
exact objects, or COCO's annotated ones), reusing the scorer's mention extraction. The score rewards
coverage and punishes hallucination:  score = covered - hallucination_weight * hallucinated.
A weight above 1 matters: with 1, dropping a true object costs as much as dropping a hallucinated one,
and preference pairs then teach the model to say less rather than to say only what it sees.
"""

from __future__ import annotations

from halign.rewards.object_hallucination import ObjectVocabulary, score_item


class GroundingJudge:
    name = "grounding"

    def __init__(self, vocabulary: dict[str, list[str]] | None = None, hallucination_weight: float = 2.0,
                 objects_key: str = "objects", **_ignored):
        if vocabulary is None:
            raise ValueError("grounding judge: needs a vocabulary (category -> words), e.g. the toy world's "
                             "or COCO's CHAIR synonyms")
        self.vocab = ObjectVocabulary.from_categories(vocabulary)
        self.hallucination_weight = float(hallucination_weight)
        self.objects_key = objects_key

    def config(self) -> dict:
        return {"judge": self.name, "hallucination_weight": self.hallucination_weight, "objects_key": self.objects_key}

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
