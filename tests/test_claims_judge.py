"""Claims judge: strict split/verify schemas, an LLM splitter and caption verifier against a loopback fake
endpoint (re-asks, cache), the offline objects splitter, and the image labeler's P(yes) from first-token logits."""

from __future__ import annotations

import json
import re
import time

import pytest

from fake_judge_server import FakeJudgeServer, _tag, words
from halign.rewards.judges.caption import InvalidOutput
from halign.rewards.judges.claims import ClaimsJudge, ImageLabeler, answer_token_ids, parse_answer, parse_claims
from halign.rewards.judges.registry import build_judge

CAPTION = "There are two objects: a red circle at the top and a blue star on the left."


class ClaimsServer(FakeJudgeServer):
    """Splits a response at ' and ' / ',' into claims; answers yes when the question's words are in the caption."""

    def _answer(self, h, request, fault, caption, response, pair):
        if fault in ("429", "500", "disconnect"):
            return super()._answer(h, request, fault, caption, response, pair)
        user = next(m["content"] for m in request["messages"] if m["role"] == "user")
        if response is not None:
            parts = [p.strip(" .") for p in re.split(r",| and ", response) if p.strip(" .")]
            content = json.dumps({"claims": [{"claim": p, "question": f"Is there {p} in the image?"}
                                             for p in parts]})
            if fault == "wrong_schema":
                content = json.dumps({"claims": parts})
        else:
            asked = set(words(_tag(user, "question") or "")) - {"in"}
            content = json.dumps({"answer": "yes" if asked <= set(words(caption)) else "no"})
        h._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                      "usage": {"prompt_tokens": 10, "completion_tokens": 5}})


@pytest.fixture
def server():
    srv = ClaimsServer(latency=0.002).start()
    yield srv
    srv.stop()


def data(texts):
    prompts = {"p": {"id": "p", "images": ["unused.png"], "question": "Describe the image.", "caption": CAPTION}}
    return prompts, [{"id": f"c{i}", "prompt_id": "p", "text": t} for i, t in enumerate(texts)]


def test_parsers_are_strict():
    ok = parse_claims('{"claims": [{"claim": "a red circle", "question": "Is there a red circle?"}]}')
    assert ok == {"claims": [{"claim": "a red circle", "question": "Is there a red circle?"}]}
    assert parse_claims('```json\n{"claims": []}\n```') == {"claims": []}
    for bad in ('{"claims": ["a red circle"]}', '{"claims": [{"claim": "x", "question": "no mark"}]}',
                '{"claims": [{"claim": "x", "question": "q?", "extra": 1}]}', '{"claims": [], "note": ""}', "[]"):
        with pytest.raises(InvalidOutput):
            parse_claims(bad)
    assert parse_answer('{"answer": "Yes."}') == {"answer": "yes"}
    with pytest.raises(InvalidOutput):
        parse_answer('{"answer": "maybe"}')


def test_llm_split_caption_verify(server, tmp_path):
    opts = dict(base_url=server.url, model="fake", cache_dir=tmp_path / "cache", progress=False, max_reasks=2,
                backoff_base=0.01)
    judge = build_judge("claims", **opts)
    prompts, cands = data(["a red circle and a blue star.", "a red circle, a green square and a yellow cross.",
                           "nothing to see"])
    server.schedule = {cands[1]["text"]: ["wrong_schema", None]}  # first split reply is off-schema: re-ask
    out = judge.judge(cands, prompts)
    assert [j["score"] for j in out] == [0.0, -2.0, -1.0]
    assert out[1]["hallucinated"] == ["a green square", "a yellow cross"] and out[1]["covered"] == ["a red circle"]
    assert [c["verdict"] for c in out[1]["claims"]] == [True, False, False]
    assert out[1]["claims"][0]["question"] == "Is there a red circle in the image?"
    assert judge.stats.reasks == 1 and out[0]["usage"]["prompt_tokens"] > 0 and not out[0]["cached"]
    info = judge.manifest_info()
    assert info["template"] == "claims_split_v1+claims_split_video_v1+claims_verify_v1+claims_verify_video_v1"
    assert len(info["template_sha256"]) == 64

    calls = server.total_calls
    again = build_judge("claims", **opts).judge(cands, prompts)  # warm cache: no call at all
    assert server.total_calls == calls and all(j["cached"] for j in again)
    assert [j["score"] for j in again] == [0.0, -2.0, -1.0]


def test_failures_are_recorded_not_scored(server, tmp_path):
    judge = ClaimsJudge(base_url=server.url, model="fake", progress=False, max_retries=1, backoff_base=0.01)
    prompts, cands = data(["a red circle.", "a blue star."])
    prompts["nocap"] = {"id": "nocap", "images": ["x.png"], "question": "Q?"}
    cands.append({"id": "c9", "prompt_id": "nocap", "text": "a red circle."})
    server.schedule = {"a blue star.": ["500", "500"]}
    out = judge.judge(cands, prompts)
    assert out[0]["score"] == 0.0
    assert out[1]["score"] is None and "split failed" in out[1]["error"]
    assert out[2]["score"] is None and "no caption" in out[2]["error"]


def test_objects_splitter_with_caption_verifier(server):
    judge = ClaimsJudge(splitter="objects", base_url=server.url, model="fake", progress=False)
    prompts, cands = data(["A red circle and two stars near a circle.", "a square"])
    out = judge.judge(cands, prompts)
    assert [c["question"] for c in out[0]["claims"]] == ["Is there a circle in the image?",
                                                          "Is there a star in the image?"]
    assert [j["score"] for j in out] == [0.0, -1.0] and out[1]["hallucinated"] == ["square"]


class FakeTokenizer:
    """A byte-level-BPE-like vocabulary: 'ĠYes' / 'yes' exist, bare 'Yes' encodes to two pieces."""

    all_special_ids = [0]
    vocab = {"<unk>": 0, "ĠYes": 5, "yes": 6, "ĠNo": 7, "no": 8, "Y": 9, "es": 10, "ĠYesterday": 11, "N": 12}

    def get_vocab(self):
        return self.vocab

    def encode(self, text, add_special_tokens=False):
        return {" Yes": [5], "yes": [6], " No": [7], "no": [8], "Yes": [9, 10], "No": [12, 8]}.get(text, [0])


def test_answer_token_ids():
    assert answer_token_ids(FakeTokenizer()) == ([5, 6], [7, 8])


def test_image_labeler_on_tiny_checkpoint(tiny_checkpoint, tmp_path):
    from halign.align.model import load_policy
    from halign.data_gen import toy_world

    model, processor = load_policy(tiny_checkpoint)
    tok = processor.tokenizer
    yes, no = answer_token_ids(tok)
    assert set(tok.convert_ids_to_tokens(yes)) == {"▁Yes", "▁yes"}
    assert set(tok.convert_ids_to_tokens(no)) == {"▁No", "▁no"}

    records = toy_world.write_prompts(toy_world.ToyWorldConfig(), "dpo", 3, tmp_path)
    items = [(tuple(r["images"]), q) for r in records
             for q in ("Is there a circle in the image?", "Is there a star in the image?", "Describe the image.")]
    batched = ImageLabeler(model, processor, batch_size=16).p_yes(items + items[:2])
    alone = ImageLabeler(model, processor, batch_size=1).p_yes(items)
    # Left padding must not change an answer: a batch scores each question as it scores alone.
    assert batched[:-2] == pytest.approx(alone, abs=1e-4) and batched[-2:] == batched[:2]
    assert all(0 <= p <= 1 for p in batched)

    judge = ClaimsJudge(splitter="objects", verifier="image", labeler_model=model, labeler_processor=processor,
                        progress=False)
    prompts = {r["id"]: r for r in records}
    cands = [{"id": f"{r['id']}#0", "prompt_id": r["id"], "text": "a red circle and a blue star"} for r in records]
    started = time.time()
    out = judge.judge(cands, prompts)
    assert time.time() - started < 10
    for j in out:
        assert [c["text"] for c in j["claims"]] == ["circle", "star"]
        assert j["score"] == -sum(not c["verdict"] for c in j["claims"])
        assert j["claims"][0]["p_yes"] == pytest.approx(alone[records.index(prompts[j["prompt_id"]]) * 3], abs=1e-4)
    # An image that vanished since sampling fails its candidate's claims, not the run.
    prompts["gone"] = {"id": "gone", "images": [str(tmp_path / "gone.png")], "question": "Describe the image."}
    [gone, ok] = judge.judge([{"id": "g", "prompt_id": "gone", "text": "a star"}, cands[0]], prompts)
    assert gone["score"] is None and "gone.png" in gone["error"] and ok["score"] == out[0]["score"]
    info = judge.manifest_info()
    assert info["labeler"] == "in-memory model" and info["yes_token_ids"] == yes and judge.stats is None


def test_bad_options():
    with pytest.raises(ValueError, match="splitter"):
        ClaimsJudge(splitter="sentences")
    with pytest.raises(ValueError, match="labeler"):
        ClaimsJudge(splitter="objects", verifier="image")


def video_data(texts):
    prompts = {"v": {"id": "v", "images": [], "video": ["f0.png", "f1.png"], "video_fps": 4.0,
                     "question": "Describe the video.", "caption": CAPTION}}
    return prompts, [{"id": f"c{i}", "prompt_id": "v", "text": t} for i, t in enumerate(texts)]


def test_video_prompts_use_the_video_templates(server):
    """A native video prompt (no images, a clip) is judged, told that it is about a video: both LLM steps with
    the video templates, the objects splitter asking about the video."""
    judge = ClaimsJudge(base_url=server.url, model="fake", progress=False)
    prompts, cands = video_data(["a red circle and a green square"])
    [out] = judge.judge(cands, prompts)
    assert out["error"] is None and out["score"] == -1.0 and out["hallucinated"] == ["a green square"]
    split_system = server.last_messages["a red circle and a green square"][0]["content"]
    verify_system = server.last_messages["None ||| None"][0]["content"]
    assert "video-understanding assistant" in split_system and "about a video" in verify_system
    assert {"claims_split_video_v1", "claims_verify_video_v1"} <= set(judge.manifest_info()["template"].split("+"))

    objects = ClaimsJudge(splitter="objects", base_url=server.url, model="fake", progress=False)
    [out] = objects.judge(video_data(["a red circle"])[1], prompts)
    assert [c["question"] for c in out["claims"]] == ["Is there a circle in the video?"]


def test_image_verifier_watches_the_clip(halign_cache, tmp_path):
    """The labeler answers about a clip with the model's own video inputs (the quick LLaVA-NeXT-Video); a prompt
    with neither images nor a clip is refused by name."""
    from halign.align.model import load_policy
    from halign.data_gen import toy_video
    from halign.data_gen.toy_video_checkpoint import (QUICK_VIDEO_CHECKPOINT, ToyVideoCheckpointConfig,
                                                      get_toy_video_checkpoint)

    ckpt = get_toy_video_checkpoint(ToyVideoCheckpointConfig(**QUICK_VIDEO_CHECKPOINT), progress=False,
                                    log=lambda *_: None)
    model, processor = load_policy(ckpt)
    clips = toy_video.write_clips(toy_video.ToyVideoConfig(), "dpo", 2, tmp_path)
    judge = ClaimsJudge(splitter="objects", verifier="image", labeler_model=model, labeler_processor=processor,
                        progress=False)
    prompts = {c["id"]: c for c in clips} | {"blind": {"id": "blind", "images": [], "question": "Describe."}}
    cands = [{"id": f"{c['id']}#0", "prompt_id": c["id"], "text": "a circle and a star"} for c in clips]
    out = judge.judge(cands + [{"id": "b#0", "prompt_id": "blind", "text": "a star"}], prompts)
    for j in out[:2]:
        assert j["error"] is None and [c["question"] for c in j["claims"]] == [
            "Is there a circle in the video?", "Is there a star in the video?"]
        assert all(0 <= c["p_yes"] <= 1 for c in j["claims"])
    assert out[2]["score"] is None and "'blind' has neither an image nor a video" in out[2]["error"]
    # Batching does not change an answer: each clip's questions score as they do alone.
    alone = ClaimsJudge(splitter="objects", verifier="image", labeler_model=model, labeler_processor=processor,
                        batch_size=1, progress=False).judge(cands, prompts)
    assert [c["p_yes"] for j in alone for c in j["claims"]] == pytest.approx(
        [c["p_yes"] for j in out[:2] for c in j["claims"]], abs=1e-4)
