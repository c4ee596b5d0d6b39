"""MMHal-Bench-style scoring (Sun et al., 2023): an LLM judge rates each response 0-6 for hallucination and
informativeness, given what is known about the image (its object names and a human-written answer).

The scale keeps the benchmark's semantics (the rubric text in templates/mmhal_judge_v1.txt is our own):
  6 very informative with good analysis, no hallucination   2 very informative, with hallucination
  5 very informative, no hallucination                      1 somewhat informative, with hallucination
  4 somewhat informative, no hallucination                  0 not informative, with hallucination
  3 not informative, no hallucination
so a rating below 3 means "hallucinated". Metrics over the rated items:
  average_score       mean rating (0-6)
  hallucination_rate  share of ratings < 3
  informativeness     mean informativeness level / 2, in [0, 1]; levels: not = 0 (ratings 0, 3),
                      somewhat = 1 (1, 4), very = 2 (2, 5, 6)
and the same per question type (attribute, adversarial, comparison, counting, relation, environment,
holistic, other). The reference groups by `question_id % 8`; we group by the item's `question_type`, which
is the same grouping for the published file and stays right for any subset or reordering.

Rating parser: the judge ends with "Rating: N"; we take the last such occurrence (case-insensitive, markdown
emphasis allowed). A reply without one, or whose last one is not a whole number from 0 to 6, is a *failed*
judgment: it is left out of every average and listed in `failed_ids`. The reference script scores such
replies 0; we never make a rating up.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from halign.rewards.judges.caption import EndpointJudge, Template, load_template
from halign.rewards.judges.llm_client import ClientConfig, InvalidOutput, JudgeRequest, JudgeResult, LLMClient

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "mmhal_judge_v1.txt"
ITEMS_FILE = "mmhal_bench_template.json"
QUESTION_TYPES = ("attribute", "adversarial", "comparison", "counting", "relation", "environment", "holistic",
                  "other")
RESPONSE_KEYS = ("model_answer", "response", "text", "answer", "output", "prediction")
MAX_RATING = 6
INFORMATIVENESS_LEVEL = {0: 0, 1: 1, 2: 2, 3: 0, 4: 1, 5: 2, 6: 2}

# "Rating: 4", "**Rating:** 4", "rating = 4", "Rating: 4/6". The number is captured loosely (sign, decimals,
# a denominator) so that "Rating: 4.5" or "Rating: 8/10" is seen, and rejected, instead of being skipped in
# favour of an earlier, valid-looking occurrence.
_RATING_RE = re.compile(r"\brating\b[\s*_]*[:=][\s*_]*([+-]?\d+(?:\.\d+)?)(?:\s*/\s*(\d+))?", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- parsing

def parse_rating(text: str | None) -> int:
    """The last "Rating: N" of a judge reply as an int 0-6; InvalidOutput (a ValueError) otherwise."""
    matches = list(_RATING_RE.finditer(text or ""))
    if not matches:
        raise InvalidOutput('no "Rating: N" line found (N a whole number from 0 to 6)')
    value, denominator = matches[-1].group(1), matches[-1].group(2)
    if denominator is not None and int(denominator) != MAX_RATING:
        raise InvalidOutput(f"rating {value}/{denominator} is not on the 0-{MAX_RATING} scale")
    if not re.fullmatch(r"\+?\d+", value) or int(value) > MAX_RATING:
        raise InvalidOutput(f"rating {value!r} is not a whole number from 0 to {MAX_RATING}")
    return int(value)


def _validate_reply(text: str) -> dict:
    rating = parse_rating(text)
    return {"rating": rating, "explanation": (text or "").strip()}


# ---------------------------------------------------------------------------------------------- metrics

def mmhal_metrics(ratings: list[int]) -> dict:
    """Average score, hallucination rate (< 3) and informativeness of a list of valid ratings."""
    n = len(ratings)
    if not n:
        return {"average_score": 0.0, "hallucination_rate": 0.0, "informativeness": 0.0, "n": 0}
    return {
        "average_score": sum(ratings) / n,
        "hallucination_rate": sum(r < 3 for r in ratings) / n,
        "informativeness": sum(INFORMATIVENESS_LEVEL[r] for r in ratings) / (2 * n),
        "n": n,
    }


def aggregate(per_item: list[dict]) -> dict:
    """Overall metrics, per-question-type table and rating histogram from scored per-item records."""
    rated = [p for p in per_item if p["rating"] is not None]
    types = [t for t in QUESTION_TYPES if any(p["question_type"] == t for p in rated)]
    types += sorted({p["question_type"] for p in rated} - set(types))  # unknown types go last, not lost
    per_type = {t: mmhal_metrics([p["rating"] for p in rated if p["question_type"] == t]) for t in types}
    histogram = Counter(p["rating"] for p in rated)
    metrics = mmhal_metrics([p["rating"] for p in rated])
    metrics["n_failed"] = len(per_item) - len(rated)
    return {"metrics": metrics, "per_type": per_type,
            "rating_counts": {str(r): histogram.get(r, 0) for r in range(MAX_RATING + 1)}}


# ---------------------------------------------------------------------------------------------- judge

def _image_contents(item: dict) -> str:
    contents = item.get("image_content") or []
    if isinstance(contents, str):
        return contents
    return ", ".join(str(c) for c in contents) or "(none listed)"


class MMHalJudge(EndpointJudge):
    """Rates responses with an LLM on any OpenAI-compatible endpoint (through LLMClient: concurrency,
    retries on 429/5xx/timeouts, on-disk cache keyed by model + template hash + inputs)."""

    name = "mmhal"

    def __init__(self, *, model: str, base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 60.0, max_retries: int = 5,
                 cache_dir: str | Path | None = None, temperature: float = 0.0, max_tokens: int | None = 512,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, template: str | Path = TEMPLATE_PATH,
                 progress: bool = True):
        if concurrency < 1 or timeout <= 0 or max_retries < 0:
            raise ValueError("concurrency must be >= 1, timeout > 0 and max_retries >= 0")
        # No re-asks: the client's re-ask message asks for a JSON object, which would contradict this
        # template's free-text "Rating: N" format. A reply without a valid rating is a failed judgment.
        self.config = ClientConfig(model=model, base_url=base_url, api_key_env=api_key_env,
                                   concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                                   max_reasks=0, cache_dir=cache_dir, temperature=temperature,
                                   max_tokens=max_tokens, backoff_base=backoff_base, backoff_max=backoff_max)
        self.template: Template = load_template(str(template))
        self.progress = progress
        self.client = LLMClient(self.config, name=self.name)  # fails here, at start-up, without a key

    def request(self, item: dict, response: str) -> JudgeRequest:
        inputs = {"image_contents": _image_contents(item), "question": str(item.get("question") or ""),
                  "reference_answer": str(item.get("gt_answer") or ""), "response": response}
        material = self.config.key_material(self.name, self.template.sha256, inputs)
        return JudgeRequest(material, self.template.render(**inputs), _validate_reply)

    def rate(self, pairs: list[tuple[dict, str]]) -> list[JudgeResult]:
        """One result per (item, response), in order; `parsed` is {rating, explanation} or None."""
        return self.client.run([self.request(item, text) for item, text in pairs], progress=self.progress)


class MMHalMetric:
    """`Metric`: responses carry `id` and `text`; references map id -> MMHal item (question, gt_answer,
    image_content, question_type)."""

    name = "mmhal"

    def __init__(self, judge: MMHalJudge):
        self.judge = judge

    def score(self, responses: list[dict], references: dict) -> dict:
        known = [r for r in responses if r["id"] in references]
        missing = [r["id"] for r in responses if r["id"] not in references]
        results = self.judge.rate([(references[r["id"]], str(r.get("text") or "")) for r in known])
        per_item = []
        for resp, res in zip(known, results):
            item = references[resp["id"]]
            parsed = res.parsed or {}
            per_item.append({"id": resp["id"], "question_type": item.get("question_type", "unknown"),
                             "question": item.get("question"), "text": resp.get("text") or "",
                             "rating": parsed.get("rating"), "explanation": parsed.get("explanation", ""),
                             "error": res.error if res.parsed is None else None, "cached": res.cached,
                             "usage": res.usage})
        summary = aggregate(per_item)
        return {"benchmark": self.name, **summary, "per_item": per_item, "missing_ids": missing,
                "failed_ids": [p["id"] for p in per_item if p["rating"] is None],
                "settings": {"judge_model": self.judge.config.model, "template": self.judge.template.name,
                             "template_sha256": self.judge.template.sha256}}


# ---------------------------------------------------------------------------------------------- files

def response_text(rec: dict, response_key: str | None = None) -> str:
    if response_key:
        if response_key not in rec:
            raise ValueError(f"response record has no {response_key!r} key (keys: {sorted(rec)})")
        return str(rec[response_key] or "")
    for key in RESPONSE_KEYS:
        if key in rec:
            return str(rec[key] or "")
    raise ValueError(f"response record has none of the keys {list(RESPONSE_KEYS)} (keys: {sorted(rec)}); "
                     f"set --response-key")


def match_responses(records: list[dict], items: list[dict], response_key: str | None = None) -> list[dict]:
    """{id, text} per response, where id is the item's index in the items file (the reference's question_id).

    Matched by `question_id` when every record has one, else by (`image_id`, `question`) when every record
    has both (the items file filled in with `model_answer`), else by position (then the counts must agree).
    Ids that match no item are kept and end up in `missing_ids`.
    """
    if records and all("question_id" in r for r in records):
        ids = [r["question_id"] for r in records]
        ids = [int(i) if isinstance(i, str) and i.isdigit() else i for i in ids]
        ids = [i if isinstance(i, int) and 0 <= i < len(items) else f"unknown:{i}" for i in ids]
    elif records and all("image_id" in r and "question" in r for r in records):
        index = {(it.get("image_id"), it.get("question")): i for i, it in enumerate(items)}
        ids = [index.get((r["image_id"], r["question"]), f"unknown:{r['image_id']}") for r in records]
    elif len(records) == len(items):
        ids = list(range(len(items)))
    else:
        raise ValueError(f"{len(records)} responses for {len(items)} items and neither question_id nor "
                         f"image_id + question in the responses to match them")
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    if dupes:
        raise ValueError(f"several responses for the same item(s): {dupes[:5]}")
    return [{"id": i, "text": response_text(r, response_key)} for i, r in zip(ids, records)]


def score_mmhal(records: list[dict], items: list[dict], judge: MMHalJudge, response_key: str | None = None) -> dict:
    """Score response records against the MMHal items file; the report adds counts, usage and the judge."""
    responses = match_responses(records, items, response_key)
    report = MMHalMetric(judge).score(responses, dict(enumerate(items)))
    answered = {r["id"] for r in responses}
    unanswered = [i for i in range(len(items)) if i not in answered]
    report.update({"n": report["metrics"]["n"], "n_failed": len(report["failed_ids"]),
                   "n_missing": len(report["missing_ids"]), "n_unanswered": len(unanswered),
                   "unanswered_ids": unanswered, "judge": judge.manifest_info(),
                   "usage": judge.stats.to_manifest()})
    return report
