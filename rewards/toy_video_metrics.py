"""Hallucination metrics of the moving toy world (data_gen/toy_video.py), against each clip's exact tracks.

Two metrics, registered in rewards/metrics.py:

  toy_video         CHAIR-style object hallucination over the clip: a caption's object mentions against the
                    shapes of the clip's tracks (a clip record's `objects`: every shape on screen at any
                    frame). CHAIR_s, CHAIR_i and recall as rewards/object_hallucination.py computes them for
                    images; a partner named but never on screen counts as hallucinated.
  toy_video_qa      the clip's questions with their true answers (a clip record's `questions`): accuracy and
                    yes-ratio per kind (order: which of two present shapes appears after the other;
                    order_absent: the same about an absent co-occurrence partner, the adversarial case, always
                    No; still_there; exists; exists_partner: whether an absent co-occurrence partner is
                    there, always No). Answers are parsed as POPE's reference does
                    (rewards/pope.parse_pope_answer). The top-level accuracy and yes-ratio are the mean over
                    kinds, as toy POPE's are, so a kind with many questions does not hide a weak one.

Every question becomes a prompt record of its own (the clip's video + the question: `question_prompts`), so
generation stays the ordinary sampler.
"""

from __future__ import annotations

from halign.rewards.base import match_references
from halign.rewards.object_hallucination import ObjectHallucinationMetric
from halign.rewards.pope import parse_pope_answer
from halign.rewards.toy_pope import summarize_by_kind

KINDS = ("order", "order_absent", "still_there", "exists", "exists_partner")


class ToyVideoChairMetric(ObjectHallucinationMetric):
    """Object hallucination over the clip: responses carry `id` and `text`; references map id -> a clip
    record (its `objects`: the shapes of its tracks)."""

    name = "toy_video_chair"

    def __init__(self):
        from halign.rewards.vocabulary import load_vocabulary

        super().__init__(load_vocabulary("toy"))  # the moving toy world draws the image world's shapes


def question_prompts(records: list[dict]) -> list[dict]:
    """One prompt record per question of each clip record: its video, the question, the label.

    The id is `{clip id}-q{j}`; the record asks its question with the clip (no `messages`: user_messages
    builds the video part + the question), and carries the clip's objects for reports."""
    prompts = []
    for rec in records:
        questions = rec.get("questions")
        if questions is None:
            raise ValueError(f"record {rec.get('id')!r} has no 'questions' (toy video clip records have)")
        if not rec.get("video"):
            raise ValueError(f"record {rec.get('id')!r} has no 'video': its questions are about a clip")
        for j, q in enumerate(questions):
            label = str(q["answer"]).strip().lower()
            if label not in ("yes", "no"):
                raise ValueError(f"record {rec.get('id')!r}: answer must be Yes or No, got {q['answer']!r}")
            prompts.append({"id": f"{rec['id']}-q{j}", "clip_id": rec["id"], "video": list(rec["video"]),
                            "video_fps": rec.get("video_fps"), "images": [], "question": q["question"],
                            "kind": q["kind"], "question_objects": list(q["objects"]), "label": label,
                            "objects": rec.get("objects", []), "source": rec.get("source", "toy_video")})
    return prompts


def _accuracy_and_yes_ratio(rows: list[dict]) -> dict:
    return {"accuracy": sum(p["correct"] for p in rows) / len(rows),
            "yes_ratio": sum(p["prediction"] == "yes" for p in rows) / len(rows), "n": len(rows)}


def score_answers(per_item: list[dict]) -> dict:
    """Accuracy, yes-ratio and count per kind, and their means over the kinds present."""
    return summarize_by_kind(per_item, KINDS, _accuracy_and_yes_ratio, ("accuracy", "yes_ratio"))


class ToyVideoQAMetric:
    """`Metric`: responses carry `id` and `text`; references map id -> a record from `question_prompts`."""

    name = "toy_video_qa"

    def score(self, responses: list[dict], references: dict[str, dict]) -> dict:
        matched, missing = match_references(responses, references)
        per_item = []
        for resp, ref in matched:
            text = resp.get("text") or ""
            prediction = parse_pope_answer(text)
            per_item.append({"id": resp["id"], "clip_id": ref.get("clip_id"), "kind": ref["kind"],
                             "question": ref.get("question"), "text": text, "prediction": prediction,
                             "label": ref["label"], "correct": prediction == ref["label"]})
        return {"benchmark": self.name, **score_answers(per_item), "per_item": per_item, "missing_ids": missing,
                "settings": {"parser": "pope_reference"}}
