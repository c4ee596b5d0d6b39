"""`claims` judge: RLAIF-V-style divide and conquer.

A response is split into atomic claims, each claim becomes a yes/no question, and each question is checked on
its own; the response's score is minus the number of rejected claims. Checking one short question at a time is
much easier than judging a whole paragraph, which is why open labelers get close to GPT-4V this way (RLAIF-V).

  splitter "llm"      an OpenAI-compatible LLM splits the response (template claims_split_v1, strict JSON)
  splitter "objects"  offline: one claim per object the response mentions (the grounding judge's mention
                      extraction), asked with POPE's "Is there a {} in the image?"; no LLM at all
  verifier "caption"  a text LLM answers each question from the detailed caption (template claims_verify_v1)
  verifier "image"    a labeler MLLM (any local HF checkpoint, loaded with `load_policy`) looks at the image;
                      P(yes) vs P(no) is read from its first generated token's logits. With the policy's own
                      checkpoint this is self-feedback.

Native video prompts (a record with `video`: data_gen/sources.py `as: video`, data_gen/toy_video.py) are judged
the same way, told that they are about a video: the LLM steps use the video templates (claims_split_video_v1,
claims_verify_video_v1: events in time are claims too), the objects splitter asks "Is there a {} in the
video?", and the image verifier's labeler watches the clip with its own video inputs (the sampler's).

`covered` lists the claims that passed, so the pair builder's coverage filter can keep a chosen response from
winning merely by saying less.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from halign.rewards.judges.caption import (Schema, client_config, failed_judgment, load_template,
                                           parse_json_reply, question_text, validate)
from halign.rewards.judges.llm_client import JudgeRequest, JudgeResult, LLMClient

SPLITTERS = ("llm", "objects")
VERIFIERS = ("caption", "image")
VIDEO_QUESTION_TEMPLATE = "Is there a {} in the video?"  # the objects splitter's question about a clip


# ---------------------------------------------------------------------------------------------- validation

def _claim_list(value) -> list[dict]:
    expected = 'a list of {"claim": str, "question": str ending with "?"} objects'
    if not isinstance(value, list):
        raise TypeError(expected)
    for item in value:
        if not isinstance(item, dict) or set(item) != {"claim", "question"}:
            raise TypeError(expected)
        if not all(isinstance(item[k], str) and item[k].strip() for k in item):
            raise TypeError(expected + " (non-empty strings)")
        if not item["question"].strip().endswith("?"):
            raise TypeError(expected + f"; {item['question']!r} is not a question")
    return [{"claim": i["claim"].strip(), "question": i["question"].strip()} for i in value]


def _yes_no(value) -> str:
    if not isinstance(value, str) or value.strip().lower().rstrip(".") not in ("yes", "no"):
        raise TypeError('"yes" or "no"')
    return value.strip().lower().rstrip(".")


SPLIT_SCHEMA: Schema = {"claims": (_claim_list, True)}
VERIFY_SCHEMA: Schema = {"answer": (_yes_no, True)}


def parse_claims(text: str) -> dict:
    return validate(parse_json_reply(text), SPLIT_SCHEMA)


def parse_answer(text: str) -> dict:
    return validate(parse_json_reply(text), VERIFY_SCHEMA)


# ---------------------------------------------------------------------------------------------- image labeler

def answer_token_ids(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids that begin a "yes" and a "no" answer, for any tokenizer.

    Tokenizers spell the first answer token differently ("Yes", "▁Yes", "ĠYes", "yes"...), and a word-level
    or SentencePiece tokenizer may map a bare "Yes" to <unk>. So: every casing, with and without a leading
    space, kept when it encodes to one non-special token; plus every vocabulary entry that is the word behind
    a word-boundary marker.
    """
    special = set(tokenizer.all_special_ids)
    found: dict[str, set[int]] = {"yes": set(), "no": set()}
    for word in found:
        for variant in (word, word.capitalize(), word.upper()):
            for text in (variant, " " + variant):
                ids = tokenizer.encode(text, add_special_tokens=False)
                if len(ids) == 1 and ids[0] not in special:
                    found[word].add(ids[0])
    for token, idx in tokenizer.get_vocab().items():
        word = token.lstrip("▁Ġ ").lower()
        if word in found and idx not in special:
            found[word].add(idx)
    if not found["yes"] or not found["no"]:
        raise ValueError("claims judge: the labeler's tokenizer has no single token for 'yes' or 'no'")
    return sorted(found["yes"]), sorted(found["no"])


@dataclass(frozen=True)
class Visual:
    """What the labeler looks at for one prompt: its images and, for a native video prompt, its clip."""
    images: tuple[str, ...] = ()
    video: tuple[str, ...] = ()
    video_fps: float | None = None

    @classmethod
    def of(cls, prompt: dict) -> "Visual":
        return cls(tuple(prompt.get("images") or ()), tuple(prompt.get("video") or ()), prompt.get("video_fps"))


class ImageLabeler:
    """Answers yes/no questions about a prompt's images (or clip) with a local MLLM: P(yes) from the first
    token."""

    def __init__(self, model, processor, batch_size: int = 32):
        self.model, self.processor, self.batch_size = model, processor, batch_size
        self.yes_ids, self.no_ids = answer_token_ids(processor.tokenizer)

    @torch.no_grad()
    def p_yes(self, items: list[tuple[Visual | tuple[str, ...], str]], progress: bool = False) -> list[float | None]:
        """P(yes) / (P(yes) + P(no)) for each (Visual or image paths, question); identical items are asked once.

        None where an image or a frame cannot be read (the reason is in `self.errors`, keyed by the item's
        first element)."""
        from tqdm.auto import tqdm

        from halign.data_gen.messages import load_images, load_video
        from halign.data_gen.sample import prompt_inputs

        def record(visual, question: str) -> dict:
            v = visual if isinstance(visual, Visual) else Visual(tuple(visual))
            return {"id": question, "images": list(v.images), "video": list(v.video) or None,
                    "video_fps": v.video_fps, "question": question}

        answers: dict = {}
        self.errors: dict = {}
        readable = set()
        for visual in dict.fromkeys(visual for visual, _ in items):
            try:
                load_images(record(visual, ""))
                load_video(record(visual, ""))
                readable.add(visual)
            except ValueError as err:  # an unreadable image or frame fails its claims, not the whole run
                self.errors[visual] = str(err)
        unique = [item for item in dict.fromkeys(items) if item[0] in readable]
        tokenizer = self.processor.tokenizer
        device = next(self.model.parameters()).device
        for start in tqdm(range(0, len(unique), self.batch_size), desc="claims labeler", disable=not progress):
            batch = unique[start : start + self.batch_size]
            # The sampler's inputs: images as the processor takes them, a clip as the model's own video inputs.
            inputs, _ = prompt_inputs(self.processor, [record(visual, q) for visual, q in batch], 1)
            inputs = inputs.to(device)
            # generate() for one token rather than a bare forward: it derives position ids from the attention
            # mask, so left-padded rows score exactly as they would alone.
            out = self.model.generate(**inputs, max_new_tokens=1, do_sample=False, output_logits=True,
                                      return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
            probs = torch.softmax(out.logits[0].float(), dim=-1)
            p_yes = probs[:, self.yes_ids].sum(-1)
            p_no = probs[:, self.no_ids].sum(-1)
            for item, y, n in zip(batch, p_yes.tolist(), p_no.tolist()):
                answers[item] = y / (y + n) if y + n > 0 else 0.5
        return [answers.get(item) for item in items]


# ---------------------------------------------------------------------------------------------- judge

def _kind(step: str, prompt: dict) -> str:
    """The template of an LLM step for this prompt: its video version for a native video prompt."""
    return f"{step}_video" if prompt.get("video") else step


class ClaimsJudge:
    name = "claims"

    def __init__(self, *, splitter: str = "llm", verifier: str = "caption", labeler: str | None = None,
                 labeler_model=None, labeler_processor=None, labeler_dtype: str = "float32",
                 labeler_device: str | None = None, batch_size: int = 32, threshold: float = 0.5,
                 vocabulary: dict | str = "toy", question_template: str | None = None,
                 model: str = "gpt-4o-mini", base_url: str | None = None, api_key_env: str | None = None,
                 concurrency: int = 16, timeout: float = 60.0, max_retries: int = 5, max_reasks: int = 2,
                 cache_dir: str | Path | None = None, temperature: float = 0.0, max_tokens: int | None = 1024,
                 json_mode: bool = False, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 price_in: float | None = None, price_out: float | None = None, rpm: float | None = None,
                 tpm: float | None = None, budget: float | None = None, deadline_floor: float = 3.0,
                 split_template: str = "claims_split_v1", verify_template: str = "claims_verify_v1",
                 split_video_template: str = "claims_split_video_v1",
                 verify_video_template: str = "claims_verify_video_v1", progress: bool = True):
        from halign.data_gen.toy_world import QUESTION_TEMPLATE

        if splitter not in SPLITTERS or verifier not in VERIFIERS:
            raise ValueError(f"claims judge: splitter must be one of {SPLITTERS} and verifier one of {VERIFIERS}, "
                             f"got {splitter!r} / {verifier!r}")
        if not 0 < threshold < 1:
            raise ValueError("claims judge: threshold must lie in (0, 1)")
        self.splitter, self.verifier, self.threshold, self.progress = splitter, verifier, float(threshold), progress
        self.question_template = question_template or QUESTION_TEMPLATE
        # A template the user gives is asked of images and clips alike; the default says which one it is about.
        self.video_question_template = question_template or VIDEO_QUESTION_TEMPLATE
        self.vocabulary_source = vocabulary if isinstance(vocabulary, str) else "inline"
        self.vocab = None
        if splitter == "objects":
            from halign.rewards.vocabulary import load_vocabulary
            from halign.rewards.object_hallucination import ObjectVocabulary

            self.vocab = ObjectVocabulary.from_categories(load_vocabulary(vocabulary))
        self.templates = {}
        if splitter == "llm":
            self.templates["split"] = load_template(split_template)
            self.templates["split_video"] = load_template(split_video_template)
        if verifier == "caption":
            self.templates["verify"] = load_template(verify_template)
            self.templates["verify_video"] = load_template(verify_video_template)
        self.client = None
        if self.templates:  # only a judge that talks to an LLM needs a key (fails here, at start-up)
            self.config = client_config(model=model, base_url=base_url, api_key_env=api_key_env,
                                        concurrency=concurrency, timeout=timeout, max_retries=max_retries,
                                        max_reasks=max_reasks, cache_dir=cache_dir, temperature=temperature,
                                        max_tokens=max_tokens, json_mode=json_mode, backoff_base=backoff_base,
                                        backoff_max=backoff_max, price_in=price_in, price_out=price_out,
                                        rpm=rpm, tpm=tpm, budget=budget, deadline_floor=deadline_floor)
            self.client = LLMClient(self.config, name=self.name)
        self.labeler_path = str(labeler) if labeler else None
        self.labeler = None
        if verifier == "image":
            if labeler_model is None:
                if not labeler:
                    raise ValueError("claims judge: verifier 'image' needs a labeler checkpoint (labeler=PATH)")
                from halign.align.model import load_policy

                labeler_model, labeler_processor = load_policy(labeler, labeler_dtype, labeler_device)
            self.labeler = ImageLabeler(labeler_model, labeler_processor, batch_size=batch_size)

    @property
    def stats(self):
        return self.client.stats if self.client else None

    def manifest_info(self) -> dict:
        shas = {t.name: t.sha256 for t in self.templates.values()}
        info = {"judge": self.name, "splitter": self.splitter, "verifier": self.verifier,
                "threshold": self.threshold, "question_template": self.question_template,
                "template": "+".join(shas) or None,
                "template_sha256": hashlib.sha256("".join(shas.values()).encode()).hexdigest() if shas else None}
        if self.splitter == "objects":
            info["vocabulary"] = self.vocabulary_source
        if self.labeler:
            info.update(labeler=self.labeler_path or "in-memory model", yes_token_ids=self.labeler.yes_ids,
                        no_token_ids=self.labeler.no_ids)
        if self.client:
            info.update(self.config.describe())
        return info

    def _request(self, kind: str, inputs: dict, validator) -> JudgeRequest:
        template = self.templates[kind]
        messages = template.render(**inputs)
        material = self.config.key_material(f"{self.name}-{kind}", template.sha256, inputs, messages)
        return JudgeRequest(material, messages, validator)

    def _problem(self, cand: dict, prompts: dict[str, dict]) -> str | None:
        prompt = prompts.get(cand.get("prompt_id"))
        if prompt is None:
            return f"prompt_id {cand.get('prompt_id')!r} not found in the prompts file"
        if self.verifier == "caption" and not str(prompt.get("caption") or "").strip():
            return f"prompt {cand['prompt_id']!r} has no caption, which the caption verifier needs"
        if self.verifier == "image" and not prompt.get("images") and not prompt.get("video"):
            return f"prompt {cand['prompt_id']!r} has neither an image nor a video, which the image verifier needs"
        return None

    # -- the two steps

    def split(self, candidates: list[dict], prompts: dict[str, dict]) -> list[tuple[list[dict] | None, JudgeResult]]:
        """(claims, result) per candidate; claims None when the split failed."""
        if self.splitter == "objects":
            out = []
            for cand in candidates:
                mentioned = dict.fromkeys(self.vocab.mentions(cand.get("text") or ""))
                video = bool(prompts[cand["prompt_id"]].get("video"))
                template = self.video_question_template if video else self.question_template
                claims = [{"claim": m, "question": template.format(m)} for m in mentioned]
                out.append((claims, JudgeResult(parsed={"claims": claims})))
            return out
        requests = [self._request(_kind("split", prompts[c["prompt_id"]]),
                                  {"question": question_text(prompts[c["prompt_id"]]),
                                   "response": str(c.get("text") or "")}, parse_claims) for c in candidates]
        results = self.client.run(requests, progress=self.progress)
        return [(r.parsed["claims"] if r.parsed else None, r) for r in results]

    def verify(self, questions: list[tuple[dict, str]]) -> list[tuple[float | None, JudgeResult]]:
        """(P(yes), result) per (prompt, question); P(yes) is 1/0 for the caption LLM, None when it failed."""
        if self.verifier == "image":
            items = [(Visual.of(pr), q) for pr, q in questions]
            p = self.labeler.p_yes(items, progress=self.progress)
            return [(v, JudgeResult(parsed={}) if v is not None else
                     JudgeResult(parsed=None, error=self.labeler.errors.get(item[0], "labeler failed")))
                    for v, item in zip(p, items)]
        requests = [self._request(_kind("verify", pr), {"caption": str(pr["caption"]), "claim_question": q},
                                  parse_answer) for pr, q in questions]
        results = self.client.run(requests, progress=self.progress) if requests else []
        return [((1.0 if r.parsed["answer"] == "yes" else 0.0) if r.parsed else None, r) for r in results]

    def judge(self, candidates: list[dict], prompts: dict[str, dict]) -> list[dict]:
        out: list[dict | None] = [None] * len(candidates)
        todo = []
        for i, cand in enumerate(candidates):
            problem = self._problem(cand, prompts)
            if problem:
                out[i] = failed_judgment(cand, self.name, problem)
            else:
                todo.append(i)
        splits = self.split([candidates[i] for i in todo], prompts)
        questions, owners = [], []
        for i, (claims, _) in zip(todo, splits):
            for claim in claims or []:
                questions.append((prompts[candidates[i]["prompt_id"]], claim["question"]))
                owners.append(i)
        verdicts: dict[int, list] = {i: [] for i in todo}
        for i, answer in zip(owners, self.verify(questions)):
            verdicts[i].append(answer)
        for i, (claims, split_result) in zip(todo, splits):
            out[i] = self._record(candidates[i], claims, split_result, verdicts[i])
        return out  # type: ignore[return-value]

    def _record(self, cand: dict, claims, split_result: JudgeResult, answers: list) -> dict:
        results = [split_result] + [r for _, r in answers]
        usage = {k: sum(r.usage.get(k, 0) for r in results) for k in ("prompt_tokens", "completion_tokens")}
        if claims is None:
            rec = failed_judgment(cand, self.name, f"claim split failed: {split_result.error}")
            rec["usage"] = usage
            return rec
        failed = [r.error for p, r in answers if p is None]
        if failed:
            rec = failed_judgment(cand, self.name, f"{len(failed)} claim check(s) failed; first: {failed[0]}")
            rec["usage"] = usage
            return rec
        checked = [{"text": c["claim"], "question": c["question"], "verdict": p >= self.threshold,
                    "p_yes": round(p, 6)} for c, (p, _) in zip(claims, answers)]
        rejected = [c["text"] for c in checked if not c["verdict"]]
        llm_results = [r for r in results if r.raw is not None or r.cached]
        # float(-n), not -float(n): no rejected claim scores 0.0, never -0.0
        return {"candidate_id": cand.get("id"), "prompt_id": cand.get("prompt_id"), "judge": self.name,
                "score": float(-len(rejected)), "claims": checked, "hallucinated": rejected,
                "covered": [c["text"] for c in checked if c["verdict"]],
                "rationale": f"{len(rejected)} of {len(checked)} claim(s) rejected by the {self.verifier} verifier",
                "usage": usage, "cached": bool(llm_results) and all(r.cached for r in llm_results), "error": None}
