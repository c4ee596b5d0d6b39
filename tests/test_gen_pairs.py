"""`halign gen-pairs`: source -> sample -> judge -> pairs end to end on the toy world, and its option parsing."""

from __future__ import annotations

import json

import pytest

from halign.recipes.gen_pairs import parse_option, parse_source, resolve_self_labeler


def test_parsing():
    assert parse_source('{"type": "toy", "n": 3}') == {"type": "toy", "n": 3}
    assert parse_source("jsonl:data/p.jsonl") == {"type": "jsonl", "path": "data/p.jsonl"}
    with pytest.raises(ValueError, match="TYPE:PATH"):
        parse_source("prompts.jsonl")
    assert parse_option("hallucination-weight=2.5") == ("hallucination_weight", 2.5)
    assert parse_option("vocabulary=toy") == ("vocabulary", "toy")
    assert parse_option('judges=["grounding", "claims"]') == ("judges", ["grounding", "claims"])
    with pytest.raises(ValueError, match="key=value"):
        parse_option("splitter")
    model, proc = object(), object()
    opts = resolve_self_labeler({"judges": ["grounding", {"judge": "claims", "labeler": "self"}]}, "ck", model, proc)
    assert opts["judges"][1] == {"judge": "claims", "labeler": "ck", "labeler_model": model,
                                 "labeler_processor": proc}


def test_cli_end_to_end(tiny_checkpoint, tmp_path):
    from halign.recipes.cli import main

    out = tmp_path / "run"
    rc = main(["gen-pairs", "--model", str(tiny_checkpoint), "--source", '{"type": "toy", "n": 8}',
               "--out", str(out), "--k", "4", "--max-new-tokens", "24", "--judge", "grounding",
               "--judge-option", "vocabulary=toy", "--judge-option", "hallucination_weight=2",
               "--strategy", "best_vs_worst", "--no-keep-coverage", "--no-progress"])
    assert rc == 0
    for stage in ("source", "sample", "judge", "pairs"):
        assert (out / stage / "manifest.json").exists(), stage
    assert len((out / "source" / "prompts.jsonl").read_text().splitlines()) == 8
    assert len((out / "sample" / "candidates.jsonl").read_text().splitlines()) <= 32
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "gen-pairs" and manifest["pairs"] >= 1
    assert manifest["config"]["judge_options"] == {"vocabulary": "toy", "hallucination_weight": 2}
    assert (out / "pairs" / "dataset" / "dataset_info.json").exists()


def test_bad_arguments(tmp_path):
    from halign.recipes.gen_pairs import run
    from halign.data_gen.sample import SampleConfig

    with pytest.raises(ValueError, match="exactly one"):
        run(SampleConfig(model="x"), tmp_path)
    with pytest.raises(ValueError, match="no usable prompt"):
        (tmp_path / "p.jsonl").write_text('{"id": "a", "images": ["missing.png"], "caption": "c"}\n')
        run(SampleConfig(model="x"), tmp_path / "out", source={"type": "jsonl", "path": str(tmp_path / "p.jsonl")})
