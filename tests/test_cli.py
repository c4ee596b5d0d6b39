import argparse
import dataclasses
import importlib
import os
import subprocess
import sys

import pytest

from halign.recipes.cli import COMMANDS, main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "halign.recipes.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_lists_reserved_stage_names():
    out = run_cli("--help")
    assert out.returncode == 0
    for name in ("demo", "sample", "judge", "pairs", "train", "eval", "score", "compare", "run"):
        assert name in COMMANDS and name in out.stdout


def test_unknown_option_is_a_clear_error():
    out = run_cli("demo", "--no-such-option")
    assert out.returncode == 2
    assert "unrecognized arguments: --no-such-option" in out.stderr


def test_unknown_command_is_a_clear_error():
    out = run_cli("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_dir_non_root(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["demo", "--quick", "--out", str(locked / "run")]) == 2


def test_unwritable_output_dir(tmp_path, capsys):
    # A regular file where a folder is needed fails the same way for root and for users.
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["demo", "--quick", "--out", str(blocker / "run")]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(blocker / "run") in err


# The stage commands' flags as users and scripts type them. They are derived from the config dataclasses
# (data_gen/fields.py add_flags), so renaming a field must not rename a flag unnoticed.
STAGE_FLAGS = {
    "sample": ["--model", "--prompts", "--out", "--k", "--temperature", "--top-p", "--max-new-tokens",
               "--batch-size", "--seed", "--no-dedupe", "--shard", "--dtype", "--device", "--backend",
               "--complete-yes-no"],
    "pairs": ["--judgments", "--candidates", "--prompts", "--out", "--strategy", "--min-gap", "--sample-num",
              "--no-keep-coverage", "--min-length-ratio", "--balance-lengths", "--seed"],
    "train": ["--model", "--pairs", "--out", "--config", "--full", "--accelerate-config", "--num-processes",
              "--resume", "--track-every", "--qlora", "--no-fast", "--row-tokens", "--mdpo"],
}


def stage_parser(command: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"halign {command}", exit_on_error=False)
    importlib.import_module(COMMANDS[command][0]).add_arguments(parser)
    return parser


@pytest.mark.parametrize("command", sorted(STAGE_FLAGS))
def test_stage_flags_keep_their_names(command):
    flags = {flag for action in stage_parser(command)._actions for flag in action.option_strings}
    assert flags - {"-h", "--help"} == set(STAGE_FLAGS[command])


def test_stage_flags_take_the_configs_defaults_types_and_help():
    from halign.align.dpo import TrainConfig
    from halign.data_gen.pairs import PairsConfig
    from halign.data_gen.sample import SampleConfig

    for cls in (SampleConfig, PairsConfig, TrainConfig):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls.__name__
    sample = stage_parser("sample").parse_args(["--model", "m", "--prompts", "p", "--out", "o"])
    assert SampleConfig(**{f.name: getattr(sample, f.name) for f in dataclasses.fields(SampleConfig)}) \
        == SampleConfig(model="m")
    sample = stage_parser("sample").parse_args(["--model", "m", "--prompts", "p", "--out", "o", "--no-dedupe",
                                                "--k", "3", "--top-p", "0.5", "--complete-yes-no"])
    assert (sample.dedupe, sample.k, sample.top_p, sample.complete_yes_no) == (False, 3, 0.5, True)
    pairs = stage_parser("pairs").parse_args(["--judgments", "j", "--candidates", "c", "--prompts", "p", "--out", "o"])
    assert PairsConfig(**{f.name: getattr(pairs, f.name) for f in dataclasses.fields(PairsConfig)}) == PairsConfig()
    pairs = stage_parser("pairs").parse_args(["--judgments", "j", "--candidates", "c", "--prompts", "p", "--out",
                                              "o", "--no-keep-coverage", "--min-length-ratio", "0.7"])
    assert (pairs.keep_coverage, pairs.min_length_ratio) == (False, 0.7)
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):  # the strategy's choices stay a flag check
        stage_parser("pairs").parse_args(["--judgments", "j", "--candidates", "c", "--prompts", "p", "--out", "o",
                                          "--strategy", "best"])
    train = stage_parser("train").parse_args([])  # --config can stand in for --model, --pairs, --out
    assert (train.model, train.output_dir, train.fast, train.resume, train.row_tokens) == (None, None, True, False, None)
    train = stage_parser("train").parse_args(["--out", "o", "--no-fast", "--row-tokens", "512", "dpo.beta=0.2"])
    assert (train.output_dir, train.fast, train.row_tokens, train.overrides) == ("o", False, 512, ["dpo.beta=0.2"])


def test_judge_options_are_read_as_every_override():
    from halign.data_gen.overrides import parse_option, parse_value
    from halign.recipes import gen_pairs
    from halign.rewards.judges import cli as judge_cli

    assert judge_cli.parse_option is gen_pairs.parse_option is parse_option  # one parser, data_gen/overrides.py
    assert parse_option("hallucination-weight=1e-4") == ("hallucination_weight", parse_value("1e-4")) \
        == ("hallucination_weight", 1e-4)
    assert parse_option("judges=[grounding, {judge: claims, labeler: self}]") == (
        "judges", ["grounding", {"judge": "claims", "labeler": "self"}])
    assert parse_option("base_url=http://localhost:8000/v1") == ("base_url", "http://localhost:8000/v1")
    with pytest.raises(ValueError, match=r"--judge-option 'judges.0=x' must look like key=value with a plain key"):
        parse_option("judges.0=x")
    with pytest.raises(ValueError, match=r"--judge-option 'judges=\[x': the value is not valid YAML"):
        parse_option("judges=[x")


def test_quiet_libraries_silences_deepspeeds_cpu_notice():
    """DeepSpeed, where installed, warns on a machine without a GPU that it runs on the CPU; halign's commands
    do not pass that on (the control run shows the notice is there to silence)."""
    pytest.importorskip("deepspeed")
    import torch

    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    ask = "from deepspeed.accelerator import get_accelerator; get_accelerator()"
    quiet = "from halign.recipes.cli import quiet_libraries; quiet_libraries(); " + ask
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
               for code in (ask, quiet)]
    notice = "Setting accelerator to CPU"
    if not torch.cuda.is_available():
        assert notice in outputs[0].stdout + outputs[0].stderr
    assert notice not in outputs[1].stdout + outputs[1].stderr
