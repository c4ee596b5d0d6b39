"""`grounding` judge: offline and free AI-feedback stand-in.

Compares the objects a response mentions with the ground-truth objects of its prompt (the toy world's
exact objects, or COCO's annotated ones), reusing the scorer's mention extraction. The score rewards
coverage and punishes hallucination:  score = covered - hallucination_weight * hallucinated.
A weight above 1 matters: with 1, dropping a true object costs as much as dropping a hallucinated one,
and preference pairs then teach the model to say less rather than to say only what it sees.

Existence questions ("Is there a star in the image?", as POPE asks) are scored as answers, not captions,
when the question names exactly one vocabulary object and the response answers it (see `existence_object`
and `yes_no_answer`): correct = +1, wrong = -hallucination_weight, whichever way it is wrong. A yes/no
answer is one claim about one object, so a right one earns what one correctly mentioned object earns in a
caption and a wrong one costs what one hallucinated mention costs. A wrong "no" costs as much as a wrong
"yes": in a caption, leaving an object out is silence, but answering "no" asserts that it is absent. Every
QA gap is then 1 + weight, so the `gap` pair strategy pairs right against wrong answers at the caption
settings' min_gap. A wrongly affirmed object goes to `hallucinated`, a wrongly denied one to `denied`.
"""

from __future__ import annotations

import re

from halign.rewards.judges.caption import question_text  # the question of a prompt record
from halign.rewards.object_hallucination import ObjectVocabulary, score_item
from halign.rewards.pope import parse_pope_answer
from halign.rewards.vocabulary import load_vocabulary

# How an existence question starts (after any "<image>" placeholder): POPE's "Is there a ...?" and the
# plural and "see/contain" phrasings that instruction data uses for the same question.
EXISTENCE_PREFIXES = ("is there", "are there", "does the image contain", "does the image have",
                      "do you see", "can you see")
# "Are there two stars?" asks for a count, which object ground truth (a set of categories) cannot settle.
COUNT_WORDS = frozenset({"two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "many", "several"})


def existence_object(question: str, vocab: ObjectVocabulary) -> str | None:
    """The one object an existence question asks about, else None (a caption request, a question about two
    objects such as "Is there a circle or a square?", a count, or one that names no vocabulary object).
    Attributes are not checked: "Is there a red star?" is judged as "Is there a star?"."""
    text = question.replace("<image>", " ").strip().lower()
    if not text.startswith(EXISTENCE_PREFIXES):
        return None
    if COUNT_WORDS.intersection(re.findall(r"[a-z]+", text)) or re.search(r"\d", text):
        return None
    objects = set(vocab.mentions(text))
    return objects.pop() if len(objects) == 1 else None


def yes_no_answer(text: str, obj: str, vocab: ObjectVocabulary) -> str | None:
    """'yes' or 'no' if the response answers the existence question about `obj`, else None.

    It answers when it starts with "yes" or "no" ("No.", "Yes, there is one.") or when its first sentence
    speaks about the object ("There is no star."); its polarity is then POPE's reference parse, so the
    judge and the POPE benchmark read an answer the same way. Anything else (a caption about other
    objects, an empty string) answers nothing, even though POPE's parser would read it as "yes".
    """
    words = re.findall(r"[a-z]+", (text or "").lower())
    if not words:
        return None
    first_sentence = text.split(".")[0]
    if words[0] in ("yes", "no") or obj in vocab.mentions(first_sentence):
        return parse_pope_answer(text)
    return None


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
            text, truth = cand.get("text", ""), prompt[self.objects_key]
            obj = existence_object(question_text(prompt), self.vocab)
            if obj is not None:
                judgments.append({**base, **self.score_answer(text, obj, truth)})
                continue
            item = score_item(text, truth, self.vocab)
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

    def score_answer(self, text: str, obj: str, truth: list[str]) -> dict:
        """Judgment fields for a response to "is there a(n) `obj`?" (see the module docstring)."""
        present = obj in truth
        label = "yes" if present else "no"
        answer = yes_no_answer(text, obj, self.vocab)
        if answer is None:
            # No answer to the one thing asked: as useless as a wrong answer, so any right answer is
            # preferred to it. Objects it invents still count as hallucinated, for the statistics.
            item = score_item(text, truth, self.vocab)
            return {"score": -self.hallucination_weight, "claims": [], "hallucinated": item["hallucinated"],
                    "covered": [], "denied": [], "error": None,
                    "qa": {"object": obj, "label": label, "answer": None, "correct": False},
                    "rationale": f"existence question about {obj!r}: not a yes/no answer"}
        correct = answer == label
        return {
            "score": 1.0 if correct else -self.hallucination_weight,
            "claims": [{"text": f"{'there is' if answer == 'yes' else 'there is no'} {obj}", "verdict": correct}],
            # A "yes" to a present object covers it, as mentioning it in a caption would; keep_coverage in
            # the pair builder then never drops a right answer paired with a wrong one.
            "hallucinated": [obj] if answer == "yes" and not present else [],
            "covered": [obj] if answer == "yes" and present else [],
            "denied": [obj] if answer == "no" and present else [],
            "error": None,
            "qa": {"object": obj, "label": label, "answer": answer, "correct": correct},
            "rationale": f"existence question about {obj!r}: answered {answer}, truth {label}",
        }
