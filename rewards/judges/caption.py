"""Caption-grounded LLM judge: a text-only LLM reads the detailed caption (the ground truth), the question and
one response, and returns a strictly validated JSON verdict. A pairwise mode compares two responses.

A native video prompt (a record with `video`: data_gen/sources.py `as: video`, data_gen/toy_video.py) is judged
from its clip's detailed caption like an image's, with templates that tell the judge it describes a video, so
that events in the wrong order, movements that do not happen and objects said to stay that leave count as
hallucinations (`video_template`, `video_pairwise_template`).

The prompts live in versioned files under `templates/`; their sha256 is part of every cache key and of the
manifest, so editing a prompt means a new file name and never silently mixes verdicts of two prompts.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from halign.rewards.judges.llm_client import ClientConfig, InvalidOutput, JudgeRequest, JudgeResult, LLMClient

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


# ---------------------------------------------------------------------------------------------- templates

@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str
    sha256: str

    def render(self, **values: str) -> list[dict]:
        # {{name}} placeholders instead of str.format: the JSON examples in the prompt are full of braces.
        user = self.user
        for key, value in values.items():
            user = user.replace("{{" + key + "}}", value)
        left = re.findall(r"\{\{(\w+)\}\}", user)
        if left:
            raise ValueError(f"template {self.name}: no value for placeholder(s) {left}")
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_template(name_or_path: str) -> Template:
    """A template by name (`caption_judge_v1`, looked up in templates/) or by path to a .txt file."""
    path = Path(name_or_path)
    if not path.is_file():
        path = TEMPLATE_DIR / f"{name_or_path.removesuffix('.txt')}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))
        raise FileNotFoundError(f"judge template not found: {name_or_path!r} (built-in: {known})")
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    match = re.fullmatch(r"\s*\[system\]\n(.*?)\n\[user\]\n(.*?)\s*", text, flags=re.S)
    if not match:
        raise ValueError(f"template {path}: expected a [system] section followed by a [user] section")
    return Template(path.stem, match.group(1).strip(), match.group(2).strip(), hashlib.sha256(raw).hexdigest())


# ---------------------------------------------------------------------------------------------- validation

_FENCE = re.compile(r"\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*", re.S)


def parse_json_reply(text: str) -> dict:
    """The reply must be one JSON object, bare or as a single ```json fenced block; nothing else around it."""
    fenced = _FENCE.fullmatch(text or "")
    body = fenced.group(1) if fenced else (text or "").strip()
    if not body:
        raise InvalidOutput("the reply was empty")
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as err:
        raise InvalidOutput(f"not valid JSON ({err.msg} at char {err.pos})") from None
    if not isinstance(obj, dict):
        raise InvalidOutput(f"expected a JSON object, got a JSON {type(obj).__name__}")
    return obj


def _score(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError("a number from 0 to 10")
    if not 0 <= value <= 10:
        raise TypeError(f"a number from 0 to 10 (got {value})")
    return float(value)


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("a list of strings")
    return value


def _choice_ab(value: Any) -> str:
    if value not in ("A", "B"):
        raise TypeError('"A" or "B"')
    return value


# key -> (checker that returns the clean value or raises TypeError naming what was expected, required)
Schema = dict[str, tuple[Callable[[Any], Any], bool]]
CAPTION_SCHEMA: Schema = {"score": (_score, True), "hallucinated": (_str_list, True),
                          "rationale": (_str, True), "corrected": (_str, False)}
PAIRWISE_SCHEMA: Schema = {"score_a": (_score, True), "score_b": (_score, True),
                           "hallucinated_a": (_str_list, True), "hallucinated_b": (_str_list, True),
                           "preferred": (_choice_ab, True), "rationale": (_str, True)}


def validate(obj: dict, schema: Schema) -> dict:
    """Strict: no missing keys, no extra keys, right types. The error reason is what the re-ask says."""
    missing = [k for k, (_, required) in schema.items() if required and k not in obj]
    extra = [k for k in obj if k not in schema]
    problems = []
    if missing:
        problems.append(f"missing key(s) {missing}")
    if extra:
        problems.append(f"unexpected key(s) {extra}")
    clean = {}
    for key, value in obj.items():
        if key in schema:
            try:
                clean[key] = schema[key][0](value)
            except TypeError as err:
                problems.append(f'"{key}" must be {err}')
    if problems:
        raise InvalidOutput("; ".join(problems))
    return clean


def parse_verdict(text: str) -> dict:
    return validate(parse_json_reply(text), CAPTION_SCHEMA)


def parse_pairwise_verdict(text: str) -> dict:
    verdict = validate(parse_json_reply(text), PAIRWISE_SCHEMA)
    a, b = verdict["score_a"], verdict["score_b"]
    if a != b and verdict["preferred"] != ("A" if a > b else "B"):
        raise InvalidOutput(f'"preferred" is {verdict["preferred"]} but score_a={a:g} and score_b={b:g} say '
                            f'otherwise')
    return verdict


# ---------------------------------------------------------------------------------------------- inputs

def question_text(prompt: dict) -> str:
    """The question of a prompt record: `question`, else the text of the last user message."""
    if prompt.get("question"):
        return str(prompt["question"])
    for message in reversed(prompt.get("messages") or []):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # TRL / HF chat format: [{"type": "image"}, {"type": "text", ...}]
            return " ".join(part.get("text", "") for part in content
                            if isinstance(part, dict) and part.get("type") == "text").strip()
    return ""


def failed_judgment(candidate: dict, judge: str, error: str) -> dict:
    return {"candidate_id": candidate.get("id"), "prompt_id": candidate.get("prompt_id"), "judge": judge,
            "score": None, "claims": [], "hallucinated": [], "rationale": "",
            "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "cached": False, "error": error}


def prompt_problem(candidate: dict, prompts: dict[str, dict]) -> str | None:
    prompt = prompts.get(candidate.get("prompt_id"))
    if prompt is None:
        return f"prompt_id {candidate.get('prompt_id')!r} not found in the prompts file"
    if not str(prompt.get("caption") or "").strip():
        return f"prompt {candidate.get('prompt_id')!r} has no caption, which this judge needs"
    return None


# ---------------------------------------------------------------------------------------------- judge

def client_config(*, model: str, price_in: float | None = None, price_out: float | None = None,
                  prices: dict | None = None, **settings) -> ClientConfig:
    """A checked ClientConfig from a judge's constructor options (--price-in/--price-out go to the table)."""
    prices = dict(prices or {})
    if (price_in is None) != (price_out is None):
        raise ValueError("give both --price-in and --price-out ($ per 1M input / output tokens)")
    if price_in is not None:
        prices[model] = (float(price_in), float(price_out))
    if settings.get("concurrency", 1) < 1 or settings.get("timeout", 1) <= 0 or settings.get("max_retries", 0) < 0 \
            or settings.get("max_reasks", 0) < 0:
        raise ValueError("concurrency must be >= 1, timeout > 0, max_retries and max_reasks >= 0")
    for name in ("rpm", "tpm", "budget"):
        if settings.get(name) is not None and settings[name] <= 0:
            raise ValueError(f"--{name} must be > 0, got {settings[name]}")
    return ClientConfig(model=model, prices=prices, **settings)


class EndpointJudge:
    """What a judge with one template on one OpenAI-compatible endpoint reports: `self.client` (LLMClient),
    `self.config` (ClientConfig), `self.template` and `self.name` are set by the subclass.

    `on_judgment`, when set (the CLI sets it), receives each judgment as soon as it is final, so the output
    file grows while the run goes on."""

    on_judgment: Callable[[dict], None] | None = None

    @property
    def stats(self):
        return self.client.stats

    def manifest_info(self) -> dict:
        """What decides the verdicts, for manifest.json (no key; no key named like a credential)."""
        return {"judge": self.name, "template": self.template.name, "template_sha256": self.template.sha256,
                **self.config.describe()}


class CaptionJudge(EndpointJudge):
    """Scores each candidate 0-10 for faithfulness to the prompt's detailed caption (higher = better)."""

    name = "caption"

    def __init__(self, *, model: str = "gpt-4o-mini", base_url: str | None = None,
                 api_key_env: str | None = None, concurrency: int = 16, timeout: float = 60.0,
                 max_retries: int = 5, max_reasks: int = 2, cache_dir: str | Path | None = None,
                 prices: dict[str, tuple[float, float]] | None = None, price_in: float | None = None,
                 price_out: float | None = None, temperature: float = 0.0, max_tokens: int | None = 512,
                 json_mode: bool = False, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 rpm: float | None = None, tpm: float | None = None, budget: float | None = None,
                 deadline_floor: float = 3.0, batch: bool = False, batch_poll: float = 30.0,
                 template: str = "caption_judge_v1",
                 pairwise_template: str = "caption_judge_pairwise_v1",
                 video_template: str = "caption_judge_video_v1",
                 video_pairwise_template: str = "caption_judge_video_pairwise_v1", progress: bool = True):
        self.config = client_config(model=model, base_url=base_url, api_key_env=api_key_env,
                                    concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                                    max_reasks=max_reasks, cache_dir=cache_dir, prices=prices, price_in=price_in,
                                    price_out=price_out, temperature=temperature, max_tokens=max_tokens,
                                    json_mode=json_mode, backoff_base=backoff_base, backoff_max=backoff_max,
                                    rpm=rpm, tpm=tpm, budget=budget, deadline_floor=deadline_floor, batch=batch,
                                    batch_poll=batch_poll)
        self.template = load_template(template)
        self.video_template = load_template(video_template)
        self.pairwise_template_name = pairwise_template
        self.video_pairwise_template_name = video_pairwise_template
        self.progress = progress
        self.client = LLMClient(self.config, name=self.name)  # fails here, at start-up, without a key

    def manifest_info(self) -> dict:
        return {**super().manifest_info(), "video_template": self.video_template.name,
                "video_template_sha256": self.video_template.sha256}

    def _request(self, template: Template, inputs: dict, validator) -> JudgeRequest:
        messages = template.render(**inputs)
        return JudgeRequest(self.config.key_material(self.name, template.sha256, inputs, messages), messages,
                            validator)

    # -- pointwise

    def judge(self, candidates: list[dict], prompts: dict[str, dict]) -> list[dict]:
        """One judgment per candidate, in order; candidates that cannot be judged come back failed."""
        out: list[dict | None] = [None] * len(candidates)
        requests, where = [], []
        for i, cand in enumerate(candidates):
            problem = prompt_problem(cand, prompts)
            if problem:
                out[i] = failed_judgment(cand, self.name, problem)
                continue
            prompt = prompts[cand["prompt_id"]]
            inputs = {"caption": str(prompt["caption"]), "question": question_text(prompt),
                      "response": str(cand.get("text") or "")}
            template = self.video_template if prompt.get("video") else self.template
            requests.append(self._request(template, inputs, parse_verdict))
            where.append(i)

        def finished(j: int, res: JudgeResult) -> None:
            out[where[j]] = self._record(candidates[where[j]], res)
            if self.on_judgment is not None:
                self.on_judgment(out[where[j]])

        self.client.run(requests, progress=self.progress, on_result=finished)
        return out  # type: ignore[return-value]

    def _record(self, cand: dict, res: JudgeResult) -> dict:
        if res.parsed is None:
            rec = failed_judgment(cand, self.name, res.error or "judge failed")
            rec["usage"] = res.usage
            return rec
        verdict = res.parsed
        rec = {"candidate_id": cand.get("id"), "prompt_id": cand.get("prompt_id"), "judge": self.name,
               "score": verdict["score"], "claims": [], "hallucinated": verdict["hallucinated"],
               "rationale": verdict["rationale"], "usage": res.usage, "cached": res.cached, "error": None}
        if "corrected" in verdict:
            rec["corrected"] = verdict["corrected"]
        return rec

    # -- pairwise

    def judge_pairs(self, pairs: list[tuple[dict, dict]], prompts: dict[str, dict]) -> list[dict]:
        """Compare two candidates of the same prompt; `preferred` is the winning candidate's id.

        Position bias is a known weakness of pairwise LLM judges; callers that care can judge both orders
        and keep the pairs where the two verdicts agree.
        """
        templates = {False: load_template(self.pairwise_template_name),
                     True: load_template(self.video_pairwise_template_name)}
        out: list[dict | None] = [None] * len(pairs)
        requests, where = [], []
        for i, (a, b) in enumerate(pairs):
            problem = prompt_problem(a, prompts)
            if a.get("prompt_id") != b.get("prompt_id"):
                problem = f"candidates {a.get('id')!r} and {b.get('id')!r} answer different prompts"
            if problem:
                out[i] = self._pair_record(a, b, JudgeResult(parsed=None, error=problem))
                continue
            prompt = prompts[a["prompt_id"]]
            inputs = {"caption": str(prompt["caption"]), "question": question_text(prompt),
                      "response_a": str(a.get("text") or ""), "response_b": str(b.get("text") or "")}
            requests.append(self._request(templates[bool(prompt.get("video"))], inputs, parse_pairwise_verdict))
            where.append(i)
        for i, res in zip(where, self.client.run(requests, progress=self.progress)):
            out[i] = self._pair_record(*pairs[i], res)
        return out  # type: ignore[return-value]

    def _pair_record(self, a: dict, b: dict, res: JudgeResult) -> dict:
        ids = [a.get("id"), b.get("id")]
        v = res.parsed or {}
        return {"candidate_ids": ids, "prompt_id": a.get("prompt_id"), "judge": f"{self.name}-pairwise",
                "preferred": (ids[0] if v["preferred"] == "A" else ids[1]) if v else None,
                "scores": [v["score_a"], v["score_b"]] if v else [None, None],
                "hallucinated": [v["hallucinated_a"], v["hallucinated_b"]] if v else [[], []],
                "rationale": v.get("rationale", ""), "usage": res.usage, "cached": res.cached,
                "error": res.error if not v else None}
