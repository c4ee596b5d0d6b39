"""LLM judge engine against a local fake endpoint: faults, call counts, cache, kill-and-resume, key hygiene."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_judge_server import verdict_for
from judge_fixtures import private_cache, server  # noqa: F401 (fixtures)
from halign.rewards.judges.caption import (CaptionJudge, InvalidOutput, load_template, parse_pairwise_verdict,
                                           parse_verdict, question_text)
from halign.rewards.judges.llm_client import FatalJudgeError, resolve_api_key, scrub
from halign.rewards.judges.registry import build_judge

SENTINEL = "sk-test-SENTINEL-0123456789abcdef"
CAPTION = "A red cube sits next to a blue ball on a wooden table."
REPO = Path(__file__).resolve().parents[1]


def make_data(n: int, prompt_id: str = "p0"):
    prompts = {prompt_id: {"id": prompt_id, "images": ["img.png"], "question": "Describe the image.",
                           "caption": CAPTION, "source": "test"}}
    words = ["red cube", "blue ball", "green cat", "wooden table", "yellow dog"]
    candidates = [{"id": f"c{i}", "prompt_id": prompt_id, "sample_idx": i, "model": "toy",
                   "text": f"I see a {words[i % len(words)]} number {i}."} for i in range(n)]
    return prompts, candidates


def make_judge(srv, tmp_path, **kw):
    opts = dict(base_url=srv.url, model="fake", timeout=0.4, max_retries=3, max_reasks=2, backoff_base=0.01,
                concurrency=8, cache_dir=tmp_path / "cache", progress=False)
    opts.update(kw)
    return CaptionJudge(**opts)


def strip_cached(judgments):
    return [{k: v for k, v in j.items() if k != "cached"} for j in judgments]


# ---------------------------------------------------------------------------------------------- parsing

def test_verdict_parsing_is_strict():
    ok = {"score": 7, "hallucinated": ["dog"], "rationale": "r"}
    assert parse_verdict(json.dumps(ok)) == {**ok, "score": 7.0}
    assert parse_verdict("```json\n" + json.dumps(ok) + "\n```")["score"] == 7.0
    assert parse_verdict(json.dumps({**ok, "corrected": "x"}))["corrected"] == "x"
    bad = {
        json.dumps({**ok, "extra": 1}): "unexpected key",
        json.dumps({"score": 7, "hallucinated": []}): "missing key",
        json.dumps({**ok, "score": "7"}): '"score" must be a number',
        json.dumps({**ok, "score": 11}): "0 to 10",
        json.dumps({**ok, "score": True}): '"score" must be',
        json.dumps({**ok, "hallucinated": "dog"}): "list of strings",
        json.dumps(ok)[:20]: "not valid JSON",
        "Sure! " + json.dumps(ok): "not valid JSON",
        "[1, 2]": "JSON object",
        "": "empty",
    }
    for text, reason in bad.items():
        with pytest.raises(InvalidOutput, match=reason):
            parse_verdict(text)
    pair = {"score_a": 8, "score_b": 3, "hallucinated_a": [], "hallucinated_b": ["dog"], "preferred": "A",
            "rationale": "r"}
    assert parse_pairwise_verdict(json.dumps(pair))["preferred"] == "A"
    with pytest.raises(InvalidOutput, match="preferred"):
        parse_pairwise_verdict(json.dumps({**pair, "preferred": "B"}))


def test_templates_and_question():
    t = load_template("caption_judge_v1")
    assert len(t.sha256) == 64 and "{{" not in t.render(caption="c", question="q", response="r")[1]["content"]
    with pytest.raises(ValueError, match="placeholder"):
        t.render(caption="c")
    with pytest.raises(FileNotFoundError, match="caption_judge_v1"):
        load_template("nope_v9")
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is here?"}]}]
    assert question_text({"messages": msgs}) == "What is here?"


def test_api_key_resolution_and_scrub(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert resolve_api_key("OPENAI_API_KEY", "http://127.0.0.1:8000/v1") == "EMPTY"
    assert resolve_api_key("OPENAI_API_KEY", "http://localhost:11434/v1") == "EMPTY"
    with pytest.raises(ValueError, match="MY_JUDGE_KEY"):
        resolve_api_key("MY_JUDGE_KEY", "https://api.example.com/v1")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        resolve_api_key("OPENAI_API_KEY", None)
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-value-xyz")
    assert resolve_api_key("MY_JUDGE_KEY", None) == "secret-value-xyz"
    text = scrub("bad key secret-value-xyz / sk-abcdef123456 / Bearer tok123", ["secret-value-xyz"])
    assert "secret-value-xyz" not in text and "sk-abcdef" not in text and "tok123" not in text


def test_build_judge_names_bad_options(tmp_path):
    with pytest.raises(ValueError, match="bogus"):
        build_judge("caption", bogus=1)
    with pytest.raises(ValueError, match="unknown name"):
        build_judge("nojudge")
    judge = build_judge("halign.rewards.judges.caption.CaptionJudge", base_url="http://127.0.0.1:9/v1",
                        cache_dir=tmp_path)
    assert judge.name == "caption"


# ---------------------------------------------------------------------------------------------- engine

def test_every_item_judged_once(server, tmp_path):
    srv = server()
    prompts, cands = make_data(30)
    judge = make_judge(srv, tmp_path)
    out = judge.judge(cands, prompts)
    assert [j["candidate_id"] for j in out] == [c["id"] for c in cands]
    for cand, j in zip(cands, out):
        expected = verdict_for(CAPTION, cand["text"])
        assert j["score"] == expected["score"] and j["hallucinated"] == expected["hallucinated"]
        assert j["error"] is None and j["cached"] is False and j["usage"]["prompt_tokens"] > 0
        assert srv.calls[cand["text"]] == 1
    assert judge.stats.calls == srv.total_calls == 30
    assert judge.stats.failures == judge.stats.retries == judge.stats.reasks == 0


def test_faults_end_judged_or_failed_with_exact_call_counts(server, tmp_path):
    prompts, cands = make_data(12)
    t = [c["text"] for c in cands]
    # item -> (fault schedule, calls the server must see, judged?)
    plan = {
        t[0]: (["429"], 2, True),
        t[1]: (["500", "500"], 3, True),
        t[2]: (["500"] * 9, 4, False),  # max_retries=3: 4 attempts, then failed
        t[3]: (["slow"], 2, True),  # past the 0.4 s timeout once
        t[4]: (["disconnect"], 2, True),
        t[5]: (["truncated"], 2, True),  # malformed JSON: re-asked, not retried
        t[6]: (["wrong_schema"] * 9, 3, False),  # max_reasks=2: 3 asks, then failed
        t[7]: (["fenced"], 1, True),
        t[8]: (["400_echo"], 1, False),  # not retryable
        t[9]: (["429", "truncated", "500"], 4, True),  # retry, re-ask, retry
    }
    srv = server(schedule={k: v[0] for k, v in plan.items()}, retry_after=0.3, slow_seconds=1.0)
    judge = make_judge(srv, tmp_path)
    started = time.perf_counter()
    out = judge.judge(cands, prompts)
    assert time.perf_counter() - started >= 0.3  # Retry-After honoured (backoff alone would be ~10 ms)
    for cand, j in zip(cands, out):
        faults, calls, judged = plan.get(cand["text"], ([], 1, True))
        assert srv.calls[cand["text"]] == calls, (cand["text"], faults)
        assert (j["score"] is not None) == judged and (j["error"] is None) == judged, j
        if judged:
            assert j["score"] == verdict_for(CAPTION, cand["text"])["score"]
    errors = {cand["text"]: j["error"] for cand, j in zip(cands, out)}
    assert "HTTP 500" in errors[t[2]] and "gave up after 4" in errors[t[2]]
    assert "re-ask" in errors[t[6]] and "unexpected key" in errors[t[6]]
    assert "HTTP 400" in errors[t[8]] and SENTINEL not in errors[t[8]]
    # The re-ask tells the model what was wrong with its previous reply.
    assert "not valid JSON" in srv.last_messages[t[5]][-1]["content"]
    assert judge.stats.calls == srv.total_calls == sum(v[1] for v in plan.values()) + 2
    assert judge.stats.failures == 3 and judge.stats.reasks == 1 + 2 + 1  # t[5], t[6], t[9]
    assert judge.stats.retries == 1 + 2 + 3 + 1 + 1 + 2  # t[0], t[1], t[2], t[3], t[4], t[9]

    # Failures are not cached: a rerun asks again for exactly those and for nothing else.
    before = srv.total_calls
    rerun = make_judge(srv, tmp_path).judge(cands, prompts)
    assert srv.total_calls - before == 4 + 3 + 1
    assert [j["cached"] for j in rerun].count(True) == 9


def test_cache_rerun_makes_no_calls(server, tmp_path):
    srv = server()
    prompts, cands = make_data(25)
    first = make_judge(srv, tmp_path).judge(cands, prompts)
    assert srv.total_calls == 25
    judge = make_judge(srv, tmp_path)
    second = judge.judge(cands, prompts)
    assert srv.total_calls == 25 and judge.stats.calls == 0 and judge.stats.cache_hits == 25
    assert all(j["cached"] for j in second) and strip_cached(second) == strip_cached(first)
    # Another model (or template) is another cache key.
    make_judge(srv, tmp_path, model="other").judge(cands[:3], prompts)
    assert srv.total_calls == 28


def test_unknown_prompt_duplicates_and_pairwise(server, tmp_path):
    srv = server()
    prompts, cands = make_data(3)
    prompts["p1"] = {"id": "p1", "question": "q", "caption": ""}
    cands += [{"id": "x", "prompt_id": "missing", "text": "a cat"}, {"id": "y", "prompt_id": "p1", "text": "a"},
              {"id": "dup", "prompt_id": "p0", "text": cands[0]["text"]}]
    out = make_judge(srv, tmp_path).judge(cands, prompts)
    assert out[3]["score"] is None and "not found" in out[3]["error"]
    assert out[4]["score"] is None and "no caption" in out[4]["error"]
    assert out[5]["score"] == out[0]["score"] and srv.calls[cands[0]["text"]] == 1  # same request asked once
    assert srv.total_calls == 3
    pairs = make_judge(srv, tmp_path).judge_pairs([(cands[0], cands[2]), (cands[2], cands[0])], prompts)
    assert [p["preferred"] for p in pairs] == ["c0", "c0"] and pairs[0]["scores"][0] > pairs[0]["scores"][1]


def test_bad_key_stops_the_run_without_leaking_it(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    prompts, cands = make_data(6)
    srv = server(schedule=lambda item, n: "401_echo")
    with pytest.raises(FatalJudgeError, match="HTTP 401") as err:
        make_judge(srv, tmp_path, api_key_env="OPENAI_API_KEY").judge(cands, prompts)
    assert SENTINEL not in str(err.value) and f"Bearer {SENTINEL}" in srv.auth_seen


# ---------------------------------------------------------------------------------------------- CLI

def write_inputs(tmp_path: Path, n: int) -> Path:
    prompts, cands = make_data(n)
    cands.append({"id": "orphan", "prompt_id": "nope", "sample_idx": 0, "text": "a cat"})
    d = tmp_path / "sample"
    d.mkdir()
    (d / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts.values()))
    (d / "candidates.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    return d / "candidates.jsonl"


def cli_args(srv, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["judge", "--input", str(inp), "--output", str(out), "--base-url", srv.url, "--model", "fake",
            "--timeout", "2", "--no-progress", *extra]


def test_cli_writes_judgments_manifest_and_never_the_key(server, tmp_path, monkeypatch, capsys, caplog):
    from halign.recipes.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's debug logs too
    inp = write_inputs(tmp_path, 8)
    srv = server(schedule={make_data(8)[1][3]["text"]: ["400_echo"]})
    out = tmp_path / "judge" / "judgments.jsonl"
    assert main(cli_args(srv, inp, out, "--concurrency", "4", "--price-in", "1", "--price-out", "2",
                         "--api-key-env", "OPENAI_API_KEY", "--max-failed", "0.25")) == 0
    judgments = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(judgments) == 9 and sum(j["score"] is None for j in judgments) == 2
    assert all(j["score"] is None for j in judgments[-2:])  # failed rows come last
    assert any("not found" in (j["error"] or "") for j in judgments)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["counts"] == {"candidates": 9, "judged": 7, "failed": 2, "unknown_prompt": 1, "cache_hits": 0,
                                  "resumed": 0}
    assert manifest["status"] == "done" and manifest["output"]["rows"] == 9
    assert manifest["output"]["sha256"] == __import__("hashlib").sha256(out.read_bytes()).hexdigest()
    assert manifest["template"]["sha256"] == load_template("caption_judge_v1").sha256
    assert manifest["stats"]["calls"] == 8 and manifest["stats"]["cost_usd"] > 0
    assert f"Bearer {SENTINEL}" in srv.auth_seen  # the key was used ...
    captured = capsys.readouterr()
    texts = [captured.out, captured.err, caplog.text]
    texts += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(SENTINEL in t for t in texts)  # ... and written nowhere
    assert "judged" in captured.out and "failed" in captured.out
    # 2 of 9 failed is more than the default --max-failed (5%): the same run then exits 1, saying why.
    assert main(cli_args(srv, inp, out, "--api-key-env", "OPENAI_API_KEY")) == 1
    assert "more than --max-failed 5.0%" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from halign.recipes.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    inp = write_inputs(tmp_path, 2)
    args = ["judge", "--input", str(inp), "--output", str(tmp_path / "o.jsonl"), "--no-progress"]
    monkeypatch.delenv("MY_JUDGE_KEY", raising=False)
    assert main(args) == 2  # the OpenAI host needs OPENAI_API_KEY
    assert "OPENAI_API_KEY" in capsys.readouterr().err
    assert main(args + ["--base-url", "https://judge.example.com/v1", "--api-key-env", "MY_JUDGE_KEY"]) == 2
    assert "MY_JUDGE_KEY" in capsys.readouterr().err
    assert main(args + ["--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "prompts file not found" in capsys.readouterr().err


def _run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "halign.recipes.cli", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _cached_responses(cache: Path) -> set[str]:
    done = set()
    for f in cache.rglob("*.json"):
        try:
            done.add(json.loads(f.read_text())["request"]["inputs"]["response"])
        except (OSError, ValueError):
            pass
    return done


def test_cli_kill_and_resume(server, tmp_path):
    n = 60
    env = {**os.environ, "OPENAI_API_KEY": SENTINEL}
    inp = write_inputs(tmp_path, n)
    srv = server(latency=0.04)
    out, cache = tmp_path / "run" / "judgments.jsonl", tmp_path / "run" / "cache"
    args = cli_args(srv, inp, out, "--concurrency", "2", "--cache", str(cache), "--max-failed", "0.5")

    proc = _run_cli(args, env)
    deadline = time.time() + 30
    while len(_cached_responses(cache)) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done_before_kill = _cached_responses(cache)
    assert 10 <= len(done_before_kill) < n
    streamed = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    assert streamed and all(j["score"] is not None for j in streamed)  # judgments were written as they came

    proc = _run_cli(args, env)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert all(srv.calls[text] == 1 for text in done_before_kill)  # nothing finished was asked again
    assert all(srv.calls[c] >= 1 for c in _cached_responses(cache)) and len(_cached_responses(cache)) == n
    assert srv.total_calls <= n + 2  # at most the requests in flight at the kill were repeated

    # Same output as an uninterrupted run (on a fresh server and cache), cached flags aside.
    ref_srv = server()
    ref_out = tmp_path / "ref" / "judgments.jsonl"
    ref = _run_cli(cli_args(ref_srv, inp, ref_out, "--concurrency", "8", "--max-failed", "0.5",
                            "--cache", str(tmp_path / "ref_cache")), env)
    _, ref_err = ref.communicate(timeout=60)
    assert ref.returncode == 0, ref_err
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    reference = [json.loads(line) for line in ref_out.read_text().splitlines()]
    def by_id(rows):
        return sorted(strip_cached(rows), key=lambda j: j["candidate_id"])

    assert len(resumed) == n + 1 and by_id(resumed) == by_id(reference)  # one row per candidate, same verdicts
    # Rows streamed before the kill are kept as written; the rest of the finished calls come from the cache.
    assert sum(j["cached"] for j in resumed) <= len(done_before_kill) - len(streamed)
    for text in (stdout, stderr, *(p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file())):
        assert SENTINEL not in text
