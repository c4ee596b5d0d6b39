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
