"""Hallucination tracking during training reaches the JSONL file, log_history and wandb (offline)."""

import json

import pytest

from halign.align.dpo import TrainConfig, train

DPO = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1}


def test_tracking_logs_every_n_steps(tmp_path, tiny_checkpoint, pairs_dataset, capfd):
    out = train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "t"),
                            dpo=DPO, track={"every_n_steps": 1, "n": 4, "max_new_tokens": 12}), progress=False)
    # Without a progress bar: one short line per logged step (CompactLogPrinter), not the trainer's dicts.
    printed = capfd.readouterr().out
    assert "{'loss'" not in printed and "'rewards/margins'" not in printed
    assert "step 1/2: loss " in printed and "reward accuracy" in printed and "step 2/2: loss " in printed
    assert "halluc/chair_i" in printed and "trained 2 steps in " in printed
    lines = [json.loads(line) for line in (out / "hallucination.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [0, 1, 2]
    for entry in lines:
        assert 0 <= entry["halluc/chair_i"] <= 1 and 0 <= entry["halluc/recall"] <= 1
    history = json.loads((out / "train_log.json").read_text())
    assert sum("halluc/chair_i" in h for h in history) == 3
    assert [h["step"] for h in history if "loss" in h] == [1, 2]  # tracking does not swallow the loss logs
    assert json.loads((out / "manifest.json").read_text())["final_loss"] is not None


def test_bad_track_key_is_named(tmp_path, tiny_checkpoint, pairs_dataset):
    with pytest.raises(ValueError, match="every_steps"):
        train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "t"),
                          dpo=DPO, track={"every_steps": 1}), progress=False)


def test_wandb_offline_run_has_the_metrics(tmp_path, tiny_checkpoint, pairs_dataset, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "t"),
                      dpo={**DPO, "report_to": ["wandb"]}, track={"every_n_steps": 1, "n": 4, "max_new_tokens": 12}),
          progress=False)
    import wandb

    assert wandb.run is None  # train() finished the run it opened: its files are complete
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    blobs = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    assert b"halluc/chair_i" in blobs and b"halluc/recall" in blobs


def test_checkpoint_and_resume(tmp_path, tiny_checkpoint, pairs_dataset, capsys):
    """Stop after 2 of 4 steps with a checkpoint; resuming finishes the last 2 steps, not 4 more."""
    common = {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "save_strategy": "steps", "save_steps": 2,
              "logging_steps": 1, "lr_scheduler_type": "constant"}
    out = tmp_path / "t"
    train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(out),
                      dpo={**common, "max_steps": 2}), progress=False)
    assert (out / "trainer" / "checkpoint-2").is_dir()
    train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(out),
                      dpo={**common, "max_steps": 4}, resume=True), progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"] == 4
    assert f"resuming from {out / 'trainer' / 'checkpoint-2'}" in capsys.readouterr().out
    # The restored history holds steps 1-2 from the first run, the resumed run added 3-4: each exactly once.
    steps_logged = [h["step"] for h in json.loads((out / "train_log.json").read_text()) if "loss" in h]
    assert steps_logged == [1, 2, 3, 4]
