"""data_gen/io.py: atomic writes leave no temp files behind, even after a writer was killed."""

import json
import subprocess
import sys

from halign.data_gen.io import write_json


def test_a_killed_writers_temp_file_is_removed_by_the_next_writer_and_live_ones_are_kept(tmp_path):
    target = tmp_path / "scores.json"
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)  # a process that has exited: what SIGKILL mid-write leaves behind
    orphan = tmp_path / f".scores.json.{dead_pid}.abc123.tmp"
    orphan.write_text("{half a json")
    live = tmp_path / f".scores.json.1.xyz.tmp"  # pid 1 is alive: another writer's file is not touched
    live.write_text("{")
    other = tmp_path / f".other.json.{dead_pid}.abc.tmp"  # another target's temp files are not ours to judge
    other.write_text("{")
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert not orphan.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.glob(".scores.json.*.tmp")) == [live.name]
