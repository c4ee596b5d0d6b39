"""The LLM judge against a server that behaves like a paid API: global rate limits, no quota, the same 400 for
every item, hung requests, a tampered cache, concurrent runs, kills, bad input lines, budgets, key safety."""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_judge_server import scattered, verdict_for
from judge_fixtures import private_cache, server  # noqa: F401 (fixtures)
from halign.rewards.judges.caption import CaptionJudge
from halign.rewards.judges.endpoint import FatalJudgeError, resolve_api_key
from halign.rewards.judges.judgment_log import JudgmentLog
from halign.rewards.judges.progress import Progress
from halign.rewards.judges.rate_control import RateController, parse_duration
from halign.rewards.judges.registry import build_judge

SENTINEL = "sk-test-SENTINEL-0123456789abcdef"
CAPTION = "A red cube sits next to a blue ball on a wooden table."
REPO = Path(__file__).resolve().parents[1]


def make_data(n: int):
    prompts = {"p0": {"id": "p0", "question": "Describe the image.", "caption": CAPTION}}
    cands = [{"id": f"c{i}", "prompt_id": "p0", "text": f"I see a red cube number {i}."} for i in range(n)]
    return prompts, cands


def make_judge(srv, tmp_path, **kw):
    opts = dict(base_url=srv.url, model="fake", timeout=5, max_retries=2, max_reasks=2, backoff_base=0.01,
                concurrency=8, cache_dir=tmp_path / "cache", progress=False)
    opts.update(kw)
    return CaptionJudge(**opts)


def write_inputs(folder: Path, cands: list[dict], prompts: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    prompts = prompts or make_data(0)[0]
    (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts.values()))
    (folder / "candidates.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cands))
    return folder / "candidates.jsonl"


def cli(srv, inp: Path, out: Path, *extra: str) -> list[str]:
    return ["judge", "--input", str(inp), "--output", str(out), "--base-url", srv.url, "--model", "fake",
            "--timeout", "5", "--no-progress", *extra]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------- flow control

def test_global_rate_limit_fails_nothing(server, tmp_path):
    # The server admits 40 requests/s; 16 in flight would send ~3x that. With max_retries=1 any 429 that
    # counted as a retry would fail items: none may.
    srv = server(latency=0.02, rate_limit=40, limit_retry_after=0.3)
    prompts, cands = make_data(80)
    judge = make_judge(srv, tmp_path, concurrency=16, max_retries=1)
    out = judge.judge(cands, prompts)
    assert all(j["score"] is not None for j in out) and judge.stats.failures == 0
    assert srv.limited > 0 and judge.stats.rate_limited == srv.limited
    assert srv.total_calls == 80 + srv.limited
    assert judge.client.rate.request_interval() > 0  # it paces (learnt or announced limit), not hammering
    assert srv.limited < 80  # backing off together: far fewer 429s than items


def test_rate_limit_without_announced_limits_is_learnt(server, tmp_path, monkeypatch):
    # 15 requests/s admitted: far below what 16 in flight send even on a busy machine, so the share of 429s
    # reaches the cut threshold whatever the client's own speed.
    srv = server(latency=0.02, rate_limit=15, limit_retry_after=0.3)
    from halign.rewards.judges import rate_control

    monkeypatch.setattr(rate_control.RateController, "observe_headers", lambda self, headers: None)
    prompts, cands = make_data(80)
    judge = make_judge(srv, tmp_path, concurrency=16, max_retries=1)
    out = judge.judge(cands, prompts)
    assert all(j["score"] is not None for j in out)
    assert judge.client.rate.rate is not None and srv.limited < 80  # a cap learnt from the share of 429s


def test_rpm_cap_paces_requests(server, tmp_path):
    srv = server(latency=0.0)
    prompts, cands = make_data(12)
    started = time.perf_counter()
    make_judge(srv, tmp_path, rpm=600).judge(cands, prompts)  # 10/s: 12 requests take >= 1.1 s
    assert time.perf_counter() - started >= 1.0


def test_retries_go_ahead_of_fresh_items():
    async def scenario():
        rc = RateController(max_concurrency=1, start_concurrency=1)
        order = []
        await rc.acquire(1)  # holds the only slot

        async def want(tag, priority):
            await rc.acquire(priority)
            order.append(tag)
            rc.release("ok", time.monotonic())

        waiters = [asyncio.ensure_future(want(f"fresh{i}", 1)) for i in range(3)]
        await asyncio.sleep(0)
        waiters.append(asyncio.ensure_future(want("retry", 0)))
        await asyncio.sleep(0)
        rc.release("ok", time.monotonic())
        await asyncio.gather(*waiters)
        return order

    assert asyncio.run(scenario())[0] == "retry"
    assert parse_duration("6m0s") == 360 and parse_duration("250ms") == 0.25 and parse_duration("1.5") == 1.5


def test_announced_limits_cap_and_pause():
    rc = RateController(max_concurrency=8)
    rc.observe_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "10",
                        "x-ratelimit-limit-tokens": "60000"})
    assert rc.request_interval() == pytest.approx(60 / (0.95 * 600))  # 5% headroom under 600/min
    assert rc.tokens_per_second() == pytest.approx(0.95 * 1000)
    before = time.monotonic()
    rc.observe_headers({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "2s"})
    assert rc.pause_until >= before + 2  # an exhausted allowance holds every request until its reset


def test_no_quota_stops_after_a_handful_of_calls(server, tmp_path):
    srv = server(quota_exhausted=True)
    prompts, cands = make_data(200)
    with pytest.raises(FatalJudgeError, match="no quota"):
        make_judge(srv, tmp_path, concurrency=64).judge(cands, prompts)
    assert srv.total_calls <= 10


def test_same_400_for_every_item_stops_the_run(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    srv = server(schedule=lambda item, n: "400_echo")
    prompts, cands = make_data(200)
    with pytest.raises(FatalJudgeError, match="HTTP 400") as err:
        make_judge(srv, tmp_path, concurrency=64, api_key_env="OPENAI_API_KEY").judge(cands, prompts)
    assert srv.total_calls <= 10 and SENTINEL not in str(err.value)


def test_hung_requests_are_cut_and_resent(server, tmp_path):
    prompts, cands = make_data(60)
    hung = {cands[i]["text"] for i in (5, 30, 45)}
    srv = server(latency=0.01, hang_seconds=60, schedule=lambda item, n: "hang" if item in hung and n == 0 else None)
    judge = make_judge(srv, tmp_path, timeout=60, deadline_floor=0.3)
    started = time.perf_counter()
    out = judge.judge(cands, prompts)
    assert time.perf_counter() - started < 8  # not 60 s: cut at the latency-derived deadline
    assert all(j["score"] is not None for j in out)
    assert judge.stats.deadline_cuts == 3 and all(srv.calls[t] == 2 for t in hung)


# ---------------------------------------------------------------------------------------------- cache

def test_tampered_cache_entries_are_asked_again(server, tmp_path):
    srv = server()
    prompts, cands = make_data(6)
    first = make_judge(srv, tmp_path).judge(cands, prompts)
    files = sorted((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 6
    edited = json.loads(files[0].read_text())
    edited["parsed"] = {"score": 99, "hallucinated": "lots"}
    files[0].write_text(json.dumps(edited))
    edited = json.loads(files[1].read_text())
    edited["raw"] = '{"score": 99}'
    files[1].write_text(json.dumps(edited))
    files[2].write_text("{ not json")
    judge = make_judge(srv, tmp_path)
    again = judge.judge(cands, prompts)
    assert srv.total_calls == 6 + 3 and judge.stats.cache_rejected == 3
    assert [j["score"] for j in again] == [j["score"] for j in first]
    assert all(0 <= j["score"] <= 10 for j in again)


def test_cache_is_shared_across_outputs_and_keyed_by_endpoint(server, tmp_path, monkeypatch):
    from halign.recipes.cli import main

    srv, other = server(), server()
    prompts, cands = make_data(5)
    inp = write_inputs(tmp_path / "in", cands, prompts)
    assert main(cli(srv, inp, tmp_path / "run1" / "judgments.jsonl")) == 0
    assert main(cli(srv, inp, tmp_path / "run2" / "judgments.jsonl")) == 0  # new folder, same default cache
    assert srv.total_calls == 5
    assert (tmp_path / "halign_cache" / "judge").is_dir()
    assert main(cli(other, inp, tmp_path / "run3" / "judgments.jsonl")) == 0  # another endpoint pays again
    assert other.total_calls == 5


def test_concurrent_runs_never_pay_twice(server, tmp_path):
    srv = server(latency=0.05)
    prompts, cands = make_data(40)
    inp = write_inputs(tmp_path / "in", cands, prompts)
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-m", "halign.recipes.cli",
                               *cli(srv, inp, tmp_path / f"run{i}" / "judgments.jsonl", "--concurrency", "4")],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert srv.total_calls == 40 and max(srv.calls.values()) == 1
    assert rows(tmp_path / "run0" / "judgments.jsonl") and len(rows(tmp_path / "run1" / "judgments.jsonl")) == 40


# ---------------------------------------------------------------------------------------------- output

def test_output_recovers_from_torn_and_failed_rows(tmp_path):
    path = tmp_path / "judgments.jsonl"
    ok = [{"candidate_id": f"c{i}", "score": 5.0, "error": None} for i in range(3)]
    bad = {"candidate_id": "c9", "score": None, "error": "x"}
    path.write_text(json.dumps(ok[0]) + "\n" + json.dumps(bad) + "\n" + json.dumps(ok[1]) + "\n"
                    + json.dumps(ok[2])[:15])
    (tmp_path / ".judgments.jsonl.abc.tmp").write_text("debris")
    log = JudgmentLog(path)
    assert set(log.rows) == {"c0", "c1"}
    with pytest.raises(ValueError, match="another run is writing"):
        JudgmentLog(path)
    log.close()
    assert [r["candidate_id"] for r in rows(path)] == ["c0", "c1"]  # failed row and torn tail cut off


def test_kills_at_random_points_then_resume(server, tmp_path):
    n = 60
    srv = server(latency=0.02, schedule=scattered(0.2, ("500", "truncated", "429"), seed=3), retry_after=0.05)
    prompts, cands = make_data(n)
    inp = write_inputs(tmp_path / "in", cands, prompts)
    out = tmp_path / "out" / "judgments.jsonl"
    args = [sys.executable, "-m", "halign.recipes.cli", *cli(srv, inp, out, "--concurrency", "4",
                                                              "--max-failed", "0.2")]
    for delay in (1.3, 2.0):  # start-up takes ~1 s: kills land early and mid-run (or later on a busy machine)
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    final = rows(out)
    assert sorted(r["candidate_id"] for r in final) == sorted(c["id"] for c in cands)  # one row each
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["output"]["rows"] == n and manifest["cumulative"]["runs"] >= 1
    for r in final:
        if r["score"] is not None:
            assert r["score"] == verdict_for(CAPTION, next(c["text"] for c in cands if c["id"] == r["candidate_id"]))["score"]


def test_files_follow_the_umask(server, tmp_path):
    from halign.recipes.cli import main

    srv = server()
    prompts, cands = make_data(3)
    inp = write_inputs(tmp_path / "in", cands, prompts)
    out = tmp_path / "out" / "judgments.jsonl"
    assert main(cli(srv, inp, out)) == 0
    umask = os.umask(0)
    os.umask(umask)
    made = [out, out.parent / "manifest.json", *(tmp_path / "halign_cache").rglob("*.json")]
    assert len(made) == 5 and all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask for p in made)


# ---------------------------------------------------------------------------------------------- inputs

def test_bad_input_lines(server, tmp_path, capsys):
    from halign.recipes.cli import main

    srv = server()
    prompts, cands = make_data(6)
    cands[1]["text"] = ""
    cands[2]["text"] = "   \n"
    cands[3]["text"] = None
    del cands[4]["text"]
    cands[5]["text"] = "a red cube " * 300  # 3,300 characters
    inp = write_inputs(tmp_path / "in", cands, prompts)
    out = tmp_path / "out" / "judgments.jsonl"
    assert main(cli(srv, inp, out, "--max-answer-chars", "1000", "--max-failed", "1")) == 0
    by_id = {r["candidate_id"]: r for r in rows(out)}
    for cid in ("c1", "c2", "c3", "c4"):
        assert by_id[cid]["score"] is None and "answer" in by_id[cid]["error"]
    assert srv.total_calls == 2  # the empty answers were never sent
    assert by_id["c5"]["answer_truncated"] == {"chars": 3300, "kept": 1000}
    assert len(srv.last_messages["a red cube " * 90 + "a red cube"[:10]][-1]["content"]) < 3300

    dup = tmp_path / "dup"
    write_inputs(dup, cands[:1], prompts)
    with open(dup / "prompts.jsonl", "a") as fh:
        fh.write(json.dumps({"id": "p0", "caption": "other"}) + "\n")
    assert main(cli(srv, dup / "candidates.jsonl", tmp_path / "o2")) == 2
    assert "p0" in capsys.readouterr().err

    enc = tmp_path / "enc"
    write_inputs(enc, cands[:1], prompts)
    with open(enc / "candidates.jsonl", "ab") as fh:
        fh.write(b'{"id": "x", "prompt_id": "p0", "text": "caf\xe9"}\n')
    assert main(cli(srv, enc / "candidates.jsonl", tmp_path / "o3")) == 2
    err = capsys.readouterr().err
    assert "candidates.jsonl:2" in err and "UTF-8" in err


# ---------------------------------------------------------------------------------------------- keys, cost

def test_openai_key_goes_to_the_openai_host_only(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    srv = server()
    prompts, cands = make_data(2)
    make_judge(srv, tmp_path).judge(cands, prompts)
    assert srv.auth_seen == {"Bearer EMPTY"}  # a non-OpenAI host got no key
    monkeypatch.setenv("OPENAI_BASE_URL", srv.url)  # the SDK's own redirect does not leak it either
    assert resolve_api_key(None, None) == "EMPTY"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert resolve_api_key(None, None) == SENTINEL  # api.openai.com
    monkeypatch.setenv("VLLM_KEY", "vllm-secret")
    make_judge(srv, tmp_path, api_key_env="VLLM_KEY").judge(make_data(3)[1][2:], prompts)
    assert "Bearer vllm-secret" in srv.auth_seen and f"Bearer {SENTINEL}" not in srv.auth_seen


def test_budget_stops_cleanly_and_the_rerun_continues(server, tmp_path, capsys):
    from halign.recipes.cli import main

    srv = server()
    prompts, cands = make_data(20)
    inp = write_inputs(tmp_path / "in", cands, prompts)
    out = tmp_path / "out" / "judgments.jsonl"
    # ~90 prompt tokens + 512 max completion tokens at $1000/1M each: ~$0.6 reserved per request.
    prices = ["--price-in", "1000", "--price-out", "1000", "--concurrency", "2"]
    assert main(cli(srv, inp, out, *prices, "--budget", "3")) == 2
    err = capsys.readouterr().err
    assert "request(s) to send" in err and "budget reached" in err
    first = rows(out)
    assert 0 < len(first) < 20 and all(r["score"] is not None for r in first)
    manifest = json.loads((out.parent / "manifest.json").read_text())
    assert manifest["status"].startswith("stopped") and manifest["cumulative"]["cost_usd"] <= 3
    calls = srv.total_calls
    assert main(cli(srv, inp, out, *prices, "--budget", "100")) == 0
    assert len(rows(out)) == 20 and srv.total_calls == calls + 20 - len(first)
    assert json.loads((out.parent / "manifest.json").read_text())["cumulative"]["runs"] == 2


def test_plain_progress_lines_when_not_a_terminal():
    stream = io.StringIO()
    p = Progress(100, "caption", stream=stream, every=0)
    p.update(40, failed=1, spent="$0.12")
    p.close()
    lines = stream.getvalue().splitlines()
    assert lines and "40/100 items" in lines[0] and "spent $0.12" in lines[0] and "ETA" in lines[0]


# ---------------------------------------------------------------------------------------------- small ones

def test_ensemble_takes_base_url_and_model(server, tmp_path):
    srv = server()
    judge = build_judge("ensemble", judges=["caption", {"judge": "caption", "template": "caption_judge_v1"}],
                        base_url=srv.url, model="fake-judge", cache_dir=str(tmp_path / "c"), progress=False)
    assert [m.config.model for m in judge.members] == ["fake-judge", "fake-judge"]
    assert all(m.config.url == srv.url for m in judge.members)


def test_claims_score_is_never_negative_zero(tmp_path):
    from halign.rewards.judges.claims import ClaimsJudge
    from test_claims_judge import ClaimsServer

    srv = ClaimsServer(latency=0.0).start()
    try:
        judge = ClaimsJudge(base_url=srv.url, model="fake", splitter="objects", cache_dir=tmp_path / "c",
                            progress=False)
        prompts = {"p": {"id": "p", "question": "q", "caption": "There is a red circle."}}
        out = judge.judge([{"id": "c", "prompt_id": "p", "text": "nothing at all"}], prompts)
    finally:
        srv.stop()
    assert out[0]["score"] == 0.0 and math.copysign(1, out[0]["score"]) == 1


# ---------------------------------------------------------------------------------------------- batch mode

def test_batch_mode_validates_and_reasks_live(server, tmp_path):
    prompts, cands = make_data(10)
    bad = cands[3]["text"]
    srv = server(batch_seconds=0.2, schedule={bad: ["wrong_schema"]})  # its batch reply is off-schema
    judge = make_judge(srv, tmp_path, batch=True, batch_poll=0.05, price_in=1, price_out=1)
    out = judge.judge(cands, prompts)
    assert all(j["score"] == verdict_for(CAPTION, c["text"])["score"] for j, c in zip(out, cands))
    assert srv.batch_api.batches_created == 1 and srv.calls[bad] == 2  # batch line, then one live call
    assert all(srv.calls[c["text"]] == 1 for c in cands if c["text"] != bad)
    assert judge.config.cost(1e6, 0) == 0.5  # batch price: half
    assert not list((tmp_path / "cache" / "batches").glob("*.json"))  # read and forgotten


def test_batch_mode_resumes_by_polling(server, tmp_path):
    n = 12
    srv = server(batch_seconds=3.0)
    prompts, cands = make_data(n)
    inp = write_inputs(tmp_path / "in", cands, prompts)
    out = tmp_path / "out" / "judgments.jsonl"
    args = [sys.executable, "-m", "halign.recipes.cli", *cli(srv, inp, out, "--batch", "--batch-poll", "0.1")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while srv.batch_api.batches_created == 0 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # it saved the batch id, and polls
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert srv.total_calls == 0  # killed before the batch was answered
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "polling" in done.stderr
    assert srv.batch_api.batches_created == 1 and srv.total_calls == n and max(srv.calls.values()) == 1
    assert sorted(r["candidate_id"] for r in rows(out)) == sorted(c["id"] for c in cands)


def test_changed_inputs_or_settings_start_the_output_again(tmp_path):
    # A recipe rerun after a config change must not continue judgments made with the old settings.
    from halign.data_gen import toy_world
    from halign.data_gen.io import write_jsonl
    from halign.rewards.judges.cli import run_judge

    records = toy_world.write_prompts(toy_world.ToyWorldConfig(), "dpo", 3, tmp_path / "world")
    cands = [{"id": f"{r['id']}#0", "prompt_id": r["id"], "text": "a red circle and a star"} for r in records]
    inp = write_jsonl(tmp_path / "sample" / "candidates.jsonl", cands)
    write_jsonl(tmp_path / "sample" / "prompts.jsonl", records)
    out = tmp_path / "judge" / "judgments.jsonl"

    def judge(weight):
        return run_judge("grounding", inp, out, options={"vocabulary": "toy", "hallucination_weight": weight},
                         progress=False)

    assert judge(1.0)[2]["counts"]["resumed"] == 0
    assert judge(1.0)[2]["counts"]["resumed"] == 3  # same inputs and settings: continued (nothing left to do)
    _, judgments, extra = judge(4.0)
    assert extra["counts"]["resumed"] == 0 and len(rows(out)) == 3
    assert judgments == rows(out) or sorted(map(json.dumps, judgments)) == sorted(map(json.dumps, rows(out)))
