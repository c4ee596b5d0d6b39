"""Acceptance check of the AI-feedback generator on the toy world: the claims judge (objects splitter, the tiny
checkpoint as its own image labeler) and the grounding judge, run as one ensemble through `gen-pairs`, with the
agreement statistics computed and written to the judge manifest.

The session's tiny checkpoint is trained for seconds, so its labels carry little signal and the test checks that
the statistics are computed and well-formed, not their size; the agreement reached by the standard checkpoint
is measured by tests/benchmarks/judge_agreement.py.
"""

from __future__ import annotations

import json

from halign.recipes.gen_pairs import run
from halign.data_gen.pairs import PairsConfig
from halign.data_gen.sample import SampleConfig


def test_claims_and_grounding_agreement(tiny_checkpoint, tmp_path):
    members = [{"judge": "grounding", "vocabulary": "toy"},
               {"judge": "claims", "splitter": "objects", "verifier": "image", "labeler": "self"}]
    sample_cfg = SampleConfig(model=str(tiny_checkpoint), k=4, temperature=1.0, max_new_tokens=24)
    run(sample_cfg, tmp_path, source={"type": "toy", "n": 20}, judge="ensemble",
        judge_options={"judges": members, "mode": "mean"},
        pairs_cfg=PairsConfig(strategy="best_vs_worst", min_gap=0.1, keep_coverage=False), progress=False)

    manifest = json.loads((tmp_path / "judge" / "manifest.json").read_text())
    options = manifest["config"]["options"]
    claims_info = options["members"][1]
    assert claims_info["labeler"] == str(tiny_checkpoint) and claims_info["splitter"] == "objects"
    stats = options["agreement"]["grounding vs claims"]
    rows = [json.loads(line) for line in (tmp_path / "judge" / "judgments.jsonl").read_text().splitlines()]
    # An empty sampled answer is a failed row (never judged), so agreement covers the judged rows only.
    judgments = [j for j in rows if j["score"] is not None]
    assert all("answer" in j["error"] for j in rows if j["score"] is None)
    assert stats["n"] == len(judgments) == manifest["counts"]["judged"] > 0
    order = stats["order"]
    assert order["decided_by_a"] > 0 and 0.0 <= order["agree_on_a"] <= 1.0
    assert stats["spearman"] is None or -1.0 <= stats["spearman"] <= 1.0
    assert stats["kappa"] is None or -1.0 <= stats["kappa"] <= 1.0

    # Every claim is an object the answer mentions, asked with POPE's template, scored from the image.
    for j in judgments:
        claims_score = j["members"]["claims"]["score"]
        assert claims_score == -len(j["members"]["claims"]["hallucinated"]) <= 0
    print(f"tiny checkpoint: claims agrees with grounding on {order['agree_on_a']:.0%} of "
          f"{order['decided_by_a']} pairs; spearman {stats['spearman']}, kappa {stats['kappa']}")
