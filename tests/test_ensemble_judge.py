"""Ensemble judge: hand-checked Spearman / Cohen's kappa / order agreement, the three combination modes, and the
agreement statistics landing in manifest.json through `halign judge`'s code path."""

from __future__ import annotations

import json
import math

import pytest

from halign.rewards.judges.ensemble import (EnsembleJudge, average_ranks, cohen_kappa, order_agreement,
                                            spearman)


def test_spearman_by_hand():
    # ranks of y with a tie: [1, 2, 3.5, 5, 3.5]; d_x = [-2,-1,0,1,2], d_y = [-2,-1,.5,2,.5]
    # sum d_x d_y = 8, sum d_x^2 = 10, sum d_y^2 = 9.5  ->  rho = 8 / sqrt(95)
    assert average_ranks([5, 6, 7, 8, 7]) == [1, 2, 3.5, 5, 3.5]
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    scipy_stats = pytest.importorskip("scipy.stats")
    x, y = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic)


def test_cohen_kappa_by_hand():
    a = [True, True, False, False, True, False]
    b = [True, False, False, False, True, True]
    # p_o = 4/6; both raters say yes half the time, so p_e = .5*.5 + .5*.5 = .5; kappa = (2/3 - 1/2) / (1/2)
    assert cohen_kappa(a, b) == pytest.approx(1 / 3)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([True, False], [False, True]) == pytest.approx(-1.0)
    assert cohen_kappa([True] * 3, [True] * 3) is None and cohen_kappa([], []) is None


def test_order_agreement_by_hand():
    # prompt p: pairs (0,1) A: 0<2, B: 0<1 agree; (0,2) A tie; (1,2) A: 2>0, B: 1=1 tie -> disagreement on A
    # prompt q: pair (3,4) A: 1>0, B: 0<3 disagree.
    counts_a, counts_b = [0, 2, 0, 1, 0], [0, 1, 1, 0, 3]
    out = order_agreement(counts_a, counts_b, ["p", "p", "p", "q", "q"])
    assert out == {"decided_by_a": 3, "agree_on_a": pytest.approx(1 / 3), "both_decided": 2,
                   "agree_both_decided": pytest.approx(1 / 2)}


class Fixed:
    """A judge that returns given (score, hallucinated) per candidate id."""

    def __init__(self, name, verdicts):
        self.name, self.verdicts = name, verdicts

    def judge(self, candidates, prompts):
        out = []
        for c in candidates:
            score, hallucinated = self.verdicts[c["id"]]
            out.append({"candidate_id": c["id"], "prompt_id": c["prompt_id"], "judge": self.name, "score": score,
                        "hallucinated": hallucinated, "claims": [], "rationale": "", "error": None,
                        "usage": {"prompt_tokens": 0, "completion_tokens": 0}, "cached": False})
        return out


CANDS = [{"id": f"c{i}", "prompt_id": "p", "text": ""} for i in range(4)]
A = Fixed("a", {"c0": (10.0, []), "c1": (6.0, ["x"]), "c2": (2.0, ["x", "y"]), "c3": (None, [])})
B = Fixed("b", {"c0": (0.0, []), "c1": (-1.0, []), "c2": (-2.0, ["y", "z"]), "c3": (0.0, [])})


def test_modes():
    mean = EnsembleJudge([A, B], mode="mean").judge(CANDS, {})
    # z-scores over the run: a = (10, 6, 2) -> (1.2247, 0, -1.2247); b = (0, -1, -2, 0) -> mean -.75, sd .829
    sd_b = math.sqrt((0.75**2 * 2 + 0.25**2 + 1.25**2) / 4)
    assert mean[0]["score"] == pytest.approx((10 - 6) / math.sqrt(32 / 3) / 2 + (0.75 / sd_b) / 2)
    assert mean[3]["score"] is None and "a: no score" in mean[3]["error"]
    assert mean[1]["hallucinated"] == [] and mean[2]["hallucinated"] == ["x", "y", "z"]
    assert mean[2]["members"] == {"a": {"score": 2.0, "hallucinated": ["x", "y"]},
                                  "b": {"score": -2.0, "hallucinated": ["y", "z"]}}
    raw = EnsembleJudge([A, B], mode="mean", normalize="none").judge(CANDS, {})
    assert [j["score"] for j in raw[:3]] == [5.0, 2.5, 0.0]
    vote = EnsembleJudge([A, B], mode="vote").judge(CANDS, {})
    assert [j["score"] for j in vote[:3]] == [2.0, 1.0, 0.0]
    every = EnsembleJudge([A, B], mode="all").judge(CANDS, {})
    assert [j["score"] for j in every[:3]] == [1.0, 0.0, 0.0] and every[1]["hallucinated"] == ["x"]


def test_agreement_in_manifest_info():
    judge = EnsembleJudge([A, B, A], mode="vote")
    judge.judge(CANDS, {})
    info = judge.manifest_info()
    assert [m["label"] for m in info["members"]] == ["a", "b", "a#2"]
    ab = info["agreement"]["a vs b"]
    # c3 has no score from a: three candidates compared. flags a = (F, T, T), b = (F, F, T)
    # kappa: p_o = 2/3, p_e = 2/3 * 1/3 + 1/3 * 2/3 = 4/9 -> (2/3 - 4/9) / (5/9) = 0.4 (rounded to 4 places)
    assert ab["n"] == 3 and ab["spearman"] == 1.0 and ab["flag_agreement"] == 0.6667 and ab["kappa"] == 0.4
    assert ab["order"]["decided_by_a"] == 3 and ab["order"]["agree_on_a"] == 0.6667
    assert info["agreement"]["a vs a#2"]["kappa"] == 1.0


def test_cli_path_writes_agreement_to_manifest(tmp_path):
    from halign.data_gen import toy_world
    from halign.data_gen.io import write_jsonl
    from halign.rewards.judges.cli import run_judge

    records = toy_world.write_prompts(toy_world.ToyWorldConfig(), "dpo", 4, tmp_path / "world")
    texts = ["a red circle", "a red circle and a star", "a square and a cross and a star", "nothing"]
    cands = [{"id": f"{r['id']}#{k}", "prompt_id": r["id"], "text": t}
             for r in records for k, t in enumerate(texts)]
    write_jsonl(tmp_path / "sample" / "candidates.jsonl", cands)
    write_jsonl(tmp_path / "sample" / "prompts.jsonl", records)
    members = [{"judge": "grounding", "vocabulary": "toy"},
               {"judge": "grounding", "vocabulary": "toy", "hallucination_weight": 1.0}]
    out, judgments, extra = run_judge("ensemble", tmp_path / "sample" / "candidates.jsonl",
                                      tmp_path / "judge" / "judgments.jsonl",
                                      options={"judges": members, "mode": "mean"}, progress=False)
    assert extra["counts"]["judged"] == 16 and extra["stats"] is None
    manifest = json.loads((tmp_path / "judge" / "manifest.json").read_text())
    agreement = manifest["config"]["options"]["agreement"]["grounding vs grounding#1"]
    assert agreement["n"] == 16 and agreement["kappa"] == 1.0 and agreement["order"]["agree_on_a"] == 1.0


def test_bad_specs():
    with pytest.raises(ValueError, match="at least two"):
        EnsembleJudge(["grounding"])
    with pytest.raises(ValueError, match="mode"):
        EnsembleJudge(["grounding", "grounding"], mode="median")
    with pytest.raises(ValueError, match="names no judge"):
        EnsembleJudge(["grounding", {"vocabulary": "toy"}])
    with pytest.raises(ValueError, match="does not take"):
        EnsembleJudge(["grounding", {"judge": "grounding", "base_url": "http://x"}])
