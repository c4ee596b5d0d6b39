"""Omission negatives: a judged copy of a clean answer with its last item dropped.

Hallucination pairs are length-biased: a hallucinated object is usually one more item appended to a correct
list, so in most caption pairs the chosen answer is the shorter one, and DPO can lower hallucination by
learning to stop early, which drops true objects too (on the toy world's seed 4, 73% of round 1's caption
pairs had the shorter answer chosen, and recall fell 8 points; README, "What the demo shows"). An omission
negative separates the two signals: for each prompt, the best-scored answer the judge found no hallucination
in is copied without its last item ("a red star and a red triangle." -> "a red star."), and the copy is
judged like any sampled answer. Where the dropped item was a real object the judge scores the copy lower,
and the pair (complete, truncated) teaches that stopping before a real object is worse. The copies carry
`"origin": "omission"`; they are never sampled from the policy (off-policy negatives, as the completed yes/no
answers of data_gen/sample.py are).
"""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def drop_last_item(text: str) -> str | None:
    """`text` without its last sentence, or, for a one-sentence list, its last list item ("A, B and C." ->
    "A and B."; "A and B." -> "A."); None when there is nothing to drop."""
    text = text.strip()
    sentences = _SENTENCE_END.split(text)
    if len(sentences) > 1:
        return " ".join(sentences[:-1])
    end = text[-1] if text[-1:] in ".!?" else ""
    body = text[:-1] if end else text
    if " and " in body:
        head = body.rsplit(" and ", 1)[0]
        if ", " in head:
            first, last = head.rsplit(", ", 1)
            return f"{first} and {last}{end}"
        return head + end if head.strip() else None
    if ", " in body:
        return body.rsplit(", ", 1)[0] + end
    return None


def omission_candidates(candidates: list[dict], judgments: list[dict]) -> list[dict]:
    """Per prompt, the best-scored judged answer with no hallucination (yes/no answers excluded), its last item
    dropped; a copy equal to an existing candidate of the prompt is not added."""
    by_id = {j["candidate_id"]: j for j in judgments}
    best: dict[str, tuple[dict, float]] = {}
    for cand in candidates:
        judgment = by_id.get(cand["id"])
        if (judgment is None or judgment.get("score") is None or judgment.get("qa") or judgment.get("hallucinated")
                or cand.get("origin")):
            continue
        if cand["prompt_id"] not in best or judgment["score"] > best[cand["prompt_id"]][1]:
            best[cand["prompt_id"]] = (cand, judgment["score"])
    existing = {(c["prompt_id"], c["text"].strip()) for c in candidates}
    copies = []
    for prompt_id, (cand, _) in sorted(best.items()):
        text = drop_last_item(cand["text"])
        if text and (prompt_id, text) not in existing:
            copies.append({**cand, "id": f"{prompt_id}#omission", "text": text, "origin": "omission",
                           "omitted_from": cand["id"]})
    return copies
