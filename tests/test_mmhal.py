"""MMHal-Bench-style judging: rating parser edge cases, metrics by hand, response matching, the judge against
a loopback fake endpoint (ratings, malformed replies, retries, cache), the CLI, and the real 96 items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fake_judge_server import FakeJudgeServer, _tag
from shared_data import require_shared_data
from halign.recipes.cli import main as cli_main
from halign.rewards.base import Metric
from halign.rewards.judges.caption import InvalidOutput
from halign.rewards.mmhal import (TEMPLATE_PATH, MMHalJudge, MMHalMetric, aggregate, match_responses,
                                  mmhal_metrics, parse_rating, score_mmhal)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ITEMS_PATH = DATA / "mmhal_bench_template.json"

ITEMS = [
    {"question_type": "attribute", "image_id": "img0", "image_content": ["Fire hydrant"],
     "question": "What color is the cap?", "gt_answer": "The cap is yellow.", "model_answer": ""},
    {"question_type": "adversarial", "image_id": "img1", "image_content": ["Door", "Building"],
     "question": "Who is sitting on the bench?", "gt_answer": "No one is sitting on the bench.", "model_answer": ""},
    {"question_type": "counting", "image_id": "img2", "image_content": ["Dog"],
     "question": "How many dogs are there?", "gt_answer": "There are two dogs.", "model_answer": ""},
    {"question_type": "attribute", "image_id": "img3", "image_content": [],
     "question": "What colour is the car?", "gt_answer": "The car is red.", "model_answer": ""},
]


# ---------------------------------------------------------------------------------------------- parser

@pytest.mark.parametrize("reply, expected", [
    ("The answer is correct and detailed.\nRating: 5", 5),
    ("rating: 0", 0),
    ("RATING:6", 6),
    ("**Rating:** 4", 4),
    ("Rating: **3**", 3),
    ("Rating = 2", 2),
    ("Rating: 4/6", 4),
    ("Rating: 1.", 1),
    ("First I thought Rating: 2, but on reflection\nRating: 5", 5),  # the last occurrence wins
    ("Rating: 6\n\nThe response is very informative.", 6),           # need not be the last line
])
def test_parse_rating_valid(reply, expected):
    assert parse_rating(reply) == expected


@pytest.mark.parametrize("reply", [
    "", None, "The response is good.", "I would give it a 5.", "Rating: N", "Rating: 7", "Rating: 10",
    "Rating: -1", "Rating: 4.5", "Rating: 8/10", "Rating: 5\nActually, Rating: 9",  # last one is invalid
    "Rating: five", "overrating: 5",
])
def test_parse_rating_invalid_is_an_error_never_a_score(reply):
    with pytest.raises(InvalidOutput):
        parse_rating(reply)


# ---------------------------------------------------------------------------------------------- metrics

def test_metrics_by_hand():
    ratings = [6, 5, 4, 3, 2, 1, 0, 3]
    m = mmhal_metrics(ratings)
    assert m["n"] == 8
    assert m["average_score"] == pytest.approx(24 / 8)
    assert m["hallucination_rate"] == pytest.approx(3 / 8)   # 2, 1, 0
    # informativeness levels 2, 2, 1, 0, 2, 1, 0, 0 -> 8 / (2 * 8)
    assert m["informativeness"] == pytest.approx(8 / 16)
    assert mmhal_metrics([]) == {"average_score": 0.0, "hallucination_rate": 0.0, "informativeness": 0.0, "n": 0}


def test_aggregate_per_type_and_failed():
    per_item = [{"question_type": "counting", "rating": 1}, {"question_type": "attribute", "rating": 6},
                {"question_type": "attribute", "rating": 2}, {"question_type": "attribute", "rating": None},
                {"question_type": "weird", "rating": 3}]
    out = aggregate(per_item)
    assert list(out["per_type"]) == ["attribute", "counting", "weird"]  # benchmark order, unknown last
    assert out["per_type"]["attribute"] == {"average_score": 4.0, "hallucination_rate": 0.5,
                                            "informativeness": 1.0, "n": 2}
    assert out["metrics"]["n"] == 4 and out["metrics"]["n_failed"] == 1
    assert out["metrics"]["average_score"] == pytest.approx(12 / 4)
    assert out["rating_counts"] == {"0": 0, "1": 1, "2": 1, "3": 1, "4": 0, "5": 0, "6": 1}


def test_match_responses():
    by_id = match_responses([{"question_id": 2, "response": "b"}, {"question_id": "0", "text": "a"},
                             {"question_id": 99, "text": "x"}], ITEMS)
    assert by_id == [{"id": 2, "text": "b"}, {"id": 0, "text": "a"}, {"id": "unknown:99", "text": "x"}]
    filled = [dict(it, model_answer=f"ans{i}") for i, it in enumerate(ITEMS)][::-1]
    assert [r["id"] for r in match_responses(filled, ITEMS)] == [3, 2, 1, 0]
    assert match_responses([{"answer": "z"}] * 4, ITEMS)[3] == {"id": 3, "text": "z"}
    with pytest.raises(ValueError, match="neither question_id"):
        match_responses([{"answer": "z"}], ITEMS)
    with pytest.raises(ValueError, match="same item"):
        match_responses([{"question_id": 1, "text": "a"}, {"question_id": 1, "text": "b"}], ITEMS)
    with pytest.raises(ValueError, match="response-key"):
        match_responses([{"question_id": 1, "reply": "a"}], ITEMS)


# ---------------------------------------------------------------------------------------------- fake judge

class RatingServer(FakeJudgeServer):
    """Answers with `replies[response]` when set, else a short explanation and "Rating: 4"."""

    def __init__(self, replies: dict[str, str] | None = None, **kw):
        super().__init__(**kw)
        self.replies = replies or {}

    def _answer(self, h, request, fault, caption, response, pair):
        if fault in ("429", "500", "disconnect"):
            return super()._answer(h, request, fault, caption, response, pair)
        content = self.replies.get(response, "Plausible and consistent with the reference.\nRating: 4")
        h._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
                      "usage": {"prompt_tokens": 50, "completion_tokens": 10}})


@pytest.fixture
def server():
    srv = RatingServer(latency=0.002).start()
    yield srv
    srv.stop()


def make_judge(srv, tmp_path, **kw):
    opts = dict(model="fake-judge", base_url=srv.url, concurrency=4, timeout=2.0, max_retries=2,
                backoff_base=0.01, cache_dir=tmp_path / "cache", progress=False)
    opts.update(kw)
    return MMHalJudge(**opts)


def test_judge_ratings_malformed_replies_and_cache(server, tmp_path):
    server.replies = {"yellow": "Correct.\nRating: 5", "nobody": "Refuses politely.\nRating: 3",
                      "three dogs": "Wrong count.\nRating: 1", "it is red": "I liked it a lot, 9 out of 10."}
    server.schedule = {"yellow": ["429", None]}  # retried, not failed
    records = [{"question_id": i, "response": t} for i, t in enumerate(["yellow", "nobody", "three dogs", "it is red"])]
    judge = make_judge(server, tmp_path)
    report = score_mmhal(records, ITEMS, judge)
    assert [p["rating"] for p in report["per_item"]] == [5, 3, 1, None]
    assert report["failed_ids"] == [3] and report["n_failed"] == 1 and "Rating" in report["per_item"][3]["error"]
    assert report["n"] == 3 and report["metrics"]["average_score"] == pytest.approx(3.0)
    assert report["metrics"]["hallucination_rate"] == pytest.approx(1 / 3)
    assert report["per_type"]["attribute"]["n"] == 1  # the failed attribute item counts nowhere
    assert server.calls["yellow"] == 2 and server.calls["it is red"] == 1  # no re-ask for a bad rating
    # What the judge saw: question, image contents, the human answer and the response.
    user = server.last_messages["three dogs"][1]["content"]
    assert _tag(user, "image_contents") == "Dog" and _tag(user, "question") == "How many dogs are there?"
    assert _tag(user, "reference_answer") == "There are two dogs." and _tag(user, "response") == "three dogs"
    assert "Rating: N" in server.last_messages["three dogs"][0]["content"]

    # A rerun pays only for the failed item (successes are cached; failures are not).
    again = score_mmhal(records, ITEMS, make_judge(server, tmp_path))
    assert [p["cached"] for p in again["per_item"]] == [True, True, True, False]
    assert server.calls["three dogs"] == 1 and server.calls["it is red"] == 2
    assert again["metrics"] == report["metrics"]


def test_metric_protocol_and_unanswered(server, tmp_path):
    metric = MMHalMetric(make_judge(server, tmp_path, cache_dir=None))
    assert isinstance(metric, Metric)
    out = metric.score([{"id": 1, "text": "no one"}, {"id": 7, "text": "?"}], dict(enumerate(ITEMS)))
    assert out["missing_ids"] == [7] and out["metrics"]["n"] == 1 and out["per_item"][0]["rating"] == 4
    report = score_mmhal([{"question_id": 0, "text": "yellow"}], ITEMS, make_judge(server, tmp_path))
    assert report["unanswered_ids"] == [1, 2, 3] and report["judge"]["template"] == TEMPLATE_PATH.stem


def test_unreachable_endpoint_fails_items_not_the_run(tmp_path):
    srv = RatingServer().start()
    url = srv.url
    srv.stop()  # nothing listens on that port now
    judge = MMHalJudge(model="fake", base_url=url, max_retries=0, timeout=1.0, progress=False)
    report = score_mmhal([{"question_id": 0, "text": "yellow"}], ITEMS, judge)
    assert report["n"] == 0 and report["failed_ids"] == [0] and report["metrics"]["average_score"] == 0.0


def test_cli_end_to_end(server, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a loopback endpoint needs no key
    server.replies = {"a": "ok\nRating: 6", "b": "bad\nRating: 0", "c": "no rating here"}
    items = tmp_path / "items.json"
    items.write_text(json.dumps(ITEMS))
    inp = tmp_path / "responses.jsonl"
    inp.write_text("".join(json.dumps({"question_id": i, "response": t}) + "\n" for i, t in enumerate("abcd")))
    out = tmp_path / "report.json"
    args = ["score", "mmhal", "--input", str(inp), "--items", str(items), "--base-url", server.url,
            "--model", "fake-judge", "--concurrency", "2", "--cache", str(tmp_path / "cache"), "--no-progress",
            "--out", str(out)]
    assert cli_main(args) == 0
    report = json.loads(out.read_text())
    assert report["n"] == 3 and report["n_failed"] == 1 and report["failed_ids"] == [2]
    assert report["metrics"]["average_score"] == pytest.approx((6 + 0 + 4) / 3)
    assert set(report["per_type"]) == {"attribute", "adversarial"}
    text = capsys.readouterr().out
    assert "hallucination_rate" in text and "failed 1" in text
    # Errors are one line, exit code 2: a remote endpoint whose key variable is not set.
    monkeypatch.delenv("MMHAL_TEST_KEY", raising=False)
    assert cli_main(args[:6] + ["--base-url", "https://judge.example.com/v1", "--model", "m",
                                "--api-key-env", "MMHAL_TEST_KEY"]) == 2
    assert "MMHAL_TEST_KEY" in capsys.readouterr().err


def test_real_items_file(server, tmp_path):
    require_shared_data(ITEMS_PATH, "MMHal-Bench items-file")
    items = json.loads(ITEMS_PATH.read_text())
    assert len(items) == 96
    filled = [dict(it, model_answer=f"answer {i}") for i, it in enumerate(items)]
    server.replies = {f"answer {i}": f"x\nRating: {i % 7}" for i in range(96)}
    report = score_mmhal(filled, items, make_judge(server, tmp_path, concurrency=8))
    assert report["n"] == 96 and report["n_unanswered"] == 0
    assert list(report["per_type"]) == ["attribute", "adversarial", "comparison", "counting", "relation",
                                        "environment", "holistic", "other"]
    assert all(t["n"] == 12 for t in report["per_type"].values())
    ratings = [i % 7 for i in range(96)]
    assert report["metrics"]["average_score"] == pytest.approx(sum(ratings) / 96)
    user = server.last_messages["answer 0"][1]["content"]
    assert _tag(user, "image_contents") == ", ".join(items[0]["image_content"])
    assert _tag(user, "reference_answer") == items[0]["gt_answer"]
