"""The engine (recipes/runner.py): its stage table, the one rule for sources across rounds, and the aliases
(`halign rlaif`, `halign demo`, `halign gen-pairs`) as recipes that plan the same folders as the recipe
they stand for. No model runs here; the runs are tests/test_runner*.py, test_rlaif.py, test_demo.py."""

import json
from pathlib import Path

import pytest

import halign.recipes
from halign.recipes import config, inputs, rounds, stages
from halign.recipes.runner import make_plan

RECIPES = Path(halign.recipes.__file__).parent


def resolve(raw: dict | str | Path, overrides: list[str] = ()) -> dict:
    raw = config.load_recipe(raw) if not isinstance(raw, dict) else raw
    return config.resolve(config.apply_overrides(raw, list(overrides)))


def test_the_stage_table():
    assert [s.name for s in stages.STAGES] == ["sample", "judge", "omissions", "pairs", "train", "eval"]
    for s in stages.STAGES:
        assert s.section in config.SECTIONS and s.outputs and s.inputs and callable(s.run)
    toy = resolve(RECIPES / "toy_world.yaml")
    assert [s.name for s in stages.STAGES if s.runs_when(toy)] == ["sample", "judge", "pairs", "train", "eval"]
    omissions = resolve(RECIPES / "demo.yaml", ["omission_negatives=true"])
    # eval.rounds: kept: no eval per round; the kept round's eval comes after the gate (recipes/rounds.py).
    assert [s.name for s in stages.STAGES if s.runs_when(omissions)] == ["sample", "judge", "omissions", "pairs",
                                                                         "train"]
    assert stages.pairs_inputs(omissions, Path("r"))[0] == Path("r/omissions/all_judgments.jsonl")


def test_one_rule_for_sources_across_rounds(tmp_path):
    # A source's n is per round; round r reads slice r from start.
    toy = {"type": "toy_world", "split": "dpo", "n": 8, "start": 5}
    assert [inputs.round_source(toy, r)["start"] for r in (1, 2, 3)] == [5, 13, 21]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"id": f"p{i}", "question": "q"}) + "\n" for i in range(5)))
    per_round = config._check_source("source", {"type": "jsonl", "path": str(pool), "n": 2})
    ids = []
    for r in (1, 2, 3):
        written = inputs.write_source({"seed": 0}, inputs.round_source(per_round, r), tmp_path / f"r{r}")
        ids.append([json.loads(line)["id"] for line in written.read_text().splitlines()])
    assert ids == [["p0", "p1"], ["p2", "p3"], ["p4"]]
    with pytest.raises(ValueError, match="no prompts left from record 6"):
        inputs.write_source({"seed": 0}, inputs.round_source(per_round, 4), tmp_path / "r4")
    # Without n: the whole file, every round.
    whole = config._check_source("source", {"type": "jsonl", "path": str(pool)})
    assert all(inputs.round_source(whole, r) == whole for r in (1, 2, 5))
    with pytest.raises(ValueError, match="source.n must be a positive integer"):
        config._check_source("source", {"type": "jsonl", "path": str(pool), "n": 0})


def _folders(cfg: dict, run: Path) -> list[str]:
    return [step["folder"] for step in make_plan(cfg, run)]


def test_demo_recipe_is_the_demo_and_rlaif_is_a_recipe(tmp_path):
    from halign.recipes.demo import DemoConfig
    from halign.recipes.rlaif import RlaifConfig

    shipped = resolve(RECIPES / "demo.yaml")
    assert DemoConfig().rlaif_config().resolved() == shipped
    assert _folders(shipped, tmp_path) == [f"round_{r}/{s}" for r in range(1, 6)
                                           for s in ("sample", "judge", "omissions", "pairs", "train")]
    pairs = {"strategy": "gap", "min_gap": 1.0, "sample_num": 3, "balance_lengths": True}
    rlaif = RlaifConfig(model="toy", rounds=2, prompts_per_round=8, omission_negatives=True, pairs=pairs).resolved()
    # (halign rlaif's toy default trains two epochs a round, the demo one)
    assert rlaif == resolve(RECIPES / "demo.yaml", ["rounds=2", "source.n=8", "train.dpo.num_train_epochs=2"])
    assert rlaif["eval"]["rounds"] == "kept" and rounds.per_round_folders(rlaif)
    # One round with the gate: round folders too (the gate weighs round 1 against the model before it).
    one = RlaifConfig(model="toy", rounds=1).resolved()
    assert _folders(one, tmp_path) == [f"round_1/{s}" for s in ("sample", "judge", "pairs", "train")]
    assert rounds.merges(one) and str(rounds.policy_path(one, tmp_path / "round_1")).endswith("round_1/train/merged")


def test_gen_pairs_is_a_one_round_recipe_without_train(tmp_path):
    from halign.data_gen.sample import SampleConfig
    from halign.recipes.gen_pairs import gen_pairs_recipe

    raw = gen_pairs_recipe(SampleConfig(model="ckpt", k=4), source={"type": "toy", "n": 8},
                           judge_options={"vocabulary": "toy"})
    cfg = resolve(raw)
    assert cfg["train"] is None and cfg["eval"] is None and cfg["gate"] is None
    assert _folders(cfg, tmp_path) == ["sample", "judge", "pairs"]  # the flat layout, as gen-pairs wrote it
    same = resolve({"model": "ckpt", "source": {"type": "toy", "n": 8}, "sample": {"k": 4},
                    "judge": {"name": "grounding", "vocabulary": "toy"}, "train": None, "eval": None})
    assert make_plan(same, tmp_path) == make_plan(cfg, tmp_path)
    with pytest.raises(ValueError, match="train: null"):
        resolve({**raw, "rounds": 2})


def test_eval_rounds_and_the_gate_are_checked():
    with pytest.raises(ValueError, match="eval.rounds must be one of"):
        resolve(RECIPES / "toy_world.yaml", ["eval.rounds=some"])
    with pytest.raises(ValueError, match="eval.rounds: kept needs the gate"):
        resolve(RECIPES / "demo.yaml", ["gate=null"])
    with pytest.raises(ValueError, match="eval.before must stay true"):
        resolve(RECIPES / "demo.yaml", ["eval.before=false"])
    assert resolve(RECIPES / "toy_world.yaml", ["eval.rounds=kept"])["gate"]["val_scenes"] == 200


def test_a_recipe_launches_training_as_halign_train_does(tmp_path):
    from halign.align.launch import launch_command

    cfg = resolve(RECIPES / "toy_world.yaml", ["train.accelerate_config=ddp"])
    config_json = tmp_path / "train_config.json"
    argv, env = stages.launch(cfg, config_json)
    same, same_env = launch_command("ddp", None, ["--config", str(config_json)])
    port = argv.index("--master_port") + 1 if "--master_port" in argv else None
    if port:  # a free port is picked per call
        argv[port] = same[port]
    assert (argv, env) == (same, same_env) and argv[-3:] == ["train", "--config", str(config_json)]
    assert not config.notes(cfg)  # a shipped name is not a missing file
    assert "train.accelerate_config" in config.notes(resolve(RECIPES / "toy_world.yaml",
                                                             ["train.accelerate_config=nope.yaml"]))[0]


def test_typed_sections_name_the_key_and_give_the_flags(capsys):
    with pytest.raises(ValueError, match=r"eval.max_new_tokens must be int, got 'many'"):
        resolve(RECIPES / "toy_world.yaml", ["eval.max_new_tokens=many"])
    with pytest.raises(ValueError, match="train.num_processes must be a positive integer"):
        resolve(RECIPES / "toy_world.yaml", ["train.num_processes=0"])
    with pytest.raises(ValueError, match="unknown key train.epochs"):
        resolve(RECIPES / "toy_world.yaml", ["train.epochs=3"])
    from halign.recipes.cli import main

    assert main(["run", "--keys"]) == 0
    keys = capsys.readouterr().out
    assert "qa_fraction" in keys and "rounds" in keys and "accelerate_config" in keys
    import argparse

    from halign.recipes.rlaif import FLAG_FIELDS, RlaifConfig, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--prompts-per-round", "12", "--omission-negatives"])
    assert args.prompts_per_round == 12 and args.omission_negatives and args.model == "toy"
    assert RlaifConfig(**{n: getattr(args, n) for n in FLAG_FIELDS}).prompts_per_round == 12
