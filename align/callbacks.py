"""Hallucination tracking during training: a `transformers.TrainerCallback`.

Every `every_n_steps` optimizer steps (and at the end) it generates greedily on a small held-out set,
scores it with a `Metric` (CHAIR / recall on ground-truth objects by default), and reports the numbers
through `trainer.log`, so they reach every logger the run has (console, wandb, tensorboard, log_history)
with no logger-specific code, plus a JSONL file that survives when no logger is configured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from transformers import TrainerCallback

PREFIX = "halluc/"


class HallucinationCallback(TrainerCallback):
    def __init__(self, prompts: list[dict], metric, processor, every_n_steps: int = 50,
                 jsonl_path: str | Path | None = None, max_new_tokens: int = 64, batch_size: int = 32,
                 keys: tuple[str, ...] = ("chair_s", "chair_i", "recall", "mean_len")):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        if not prompts:
            raise ValueError("hallucination tracking needs at least one held-out prompt")
        self.prompts = prompts
        self.metric = metric
        self.processor = processor
        self.every_n_steps = every_n_steps
        self.jsonl_path = Path(jsonl_path) if jsonl_path else None
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.keys = keys
        self.trainer = None  # set by `attach`
        self.history: list[dict] = []

    def attach(self, trainer) -> "HallucinationCallback":
        """Register with a trainer; logging goes through `trainer.log` to all of its loggers."""
        self.trainer = trainer
        trainer.add_callback(self)
        return self

    @torch.no_grad()
    def measure(self, model) -> dict:
        from halign.data_gen.sample import generate_texts

        was_training = model.training
        model.eval()
        try:
            texts = generate_texts(model, self.processor, self.prompts, k=1, temperature=0.0,
                                   max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, progress=False)
        finally:
            model.train(was_training)
        responses = [{"id": p["id"], "text": t[0]} for p, t in zip(self.prompts, texts)]
        metrics = self.metric.score(responses, {p["id"]: p for p in self.prompts})["metrics"]
        return {PREFIX + k: float(metrics[k]) for k in self.keys if k in metrics}

    def _record(self, state, model) -> None:
        if self.trainer is None:
            raise RuntimeError("HallucinationCallback: call attach(trainer) instead of passing it in callbacks=")
        if not state.is_world_process_zero:
            return
        unwrapped = self.trainer.accelerator.unwrap_model(model)
        metrics = self.measure(unwrapped)
        entry = {"step": state.global_step, **metrics}
        self.history.append(entry)
        if self.jsonl_path:
            self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")
        self.trainer.log(metrics)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._record(state, model)  # step 0: the starting point of the curve

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_n_steps == 0:
            # trainer.log clears control.should_log, which would drop this step's own loss log (a run tracked
            # every step logged no loss at all): keep what the trainer had decided.
            should_log = control.should_log
            self._record(state, model)
            control.should_log = should_log

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._record(state, model)


class NanLossGuard(TrainerCallback):
    """Stops a run whose logged loss is not finite, naming the step (trl's own path; the fast path also
    names the batch's records, see fast_dpo.compute_loss)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(f"non-finite training loss ({loss}) logged at step {state.global_step}")


class CompactLogPrinter(TrainerCallback):
    """Without a progress bar, one short line per logging step instead of the trainer's printed dict (a dozen
    DPO statistics at four digits each): the step, the loss and the numbers a DPO run is judged by, then any
    hallucination tracking numbers. The full dicts still reach log_history, train_log.json and every logger."""

    SHOWN = (("loss", "loss"), ("rewards/accuracies", "reward accuracy"), ("rewards/margins", "margin"),
             ("grad_norm", "grad norm"), ("learning_rate", "lr"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_local_process_zero or not logs:
            return
        if "train_runtime" in logs:  # the trainer's closing summary
            print(f"trained {state.global_step} steps in {logs['train_runtime']:.1f} s "
                  f"(mean loss {logs.get('train_loss', float('nan')):.4f})")
            return
        parts = [f"{label} {float(logs[key]):.4g}" for key, label in self.SHOWN if key in logs]
        parts += [f"{key} {float(value):.4g}" for key, value in logs.items() if key.startswith(PREFIX)]
        if parts:
            print(f"step {state.global_step}/{state.max_steps}: " + ", ".join(parts), flush=True)
