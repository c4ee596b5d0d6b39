"""Hallucination tracking during training reaches the JSONL file, log_history and wandb (offline)."""

import json

import pytest

from halign.align.dpo import TrainConfig, train

DPO = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1}


def test_tracking_logs_every_n_steps(tmp_path, tiny_checkpoint, pairs_dataset):
    out = train(TrainConfig(model=str(tiny_checkpoint), pairs=str(pairs_dataset), output_dir=str(tmp_path / "t"),
                            dpo=DPO, track={"every_n_steps": 1, "n": 4, "max_new_tokens": 12}), progress=False)
    lines = [json.loads(line) for line in (out / "hallucination.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [0, 1, 2]
    for entry in lines:
        assert 0 <= entry["halluc/chair_i"] <= 1 and 0 <= entry["halluc/recall"] <= 1
    history = json.loads((out / "train_log.json").read_text())
    assert sum("halluc/chair_i" in h for h in history) == 3


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
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    blobs = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    assert b"halluc/chair_i" in blobs and b"halluc/recall" in blobs
