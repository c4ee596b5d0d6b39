"""Per-token log-probs of the answer tokens only: the LM head never sees an image or prompt position.

A packed pair row is mostly image and prompt tokens (576 image tokens per LLaVA-1.5 image against 80-150 per
answer), and DPO needs log-probs of answer tokens only. Two ways to get them, both exact:

- "fused": trl's fused LM head (`model(..., fused_lm_head=True)`, added by trl's DPOTrainer). With triton
  (CUDA/XPU) it projects only labelled positions, in vocabulary tiles, never materializing logits. Without
  triton it projects *every* position, and its torch fallback holds several [4096 x vocabulary] float32
  temporaries per tile: on CPU that is most of a step's time and peak memory at LLaVA proportions.
- "gather": the model's own forward with `logits_to_keep` = a boolean mask of the labelled positions
  (transformers' packed-training form): logits for those positions only, then a float32 log-softmax. Used
  where trl's kernel would not compact. Logits exist for answer tokens only, so memory is
  answers x vocabulary, a few hundred MB at most at these sizes.

`answer_scoring(device)` picks; tests force each one and compare both with plain trl.
"""

from __future__ import annotations

import torch
from transformers.utils import is_triton_available

FUSED, GATHER = "fused", "gather"
ENTROPY_ROWS = 1024  # entropy (a logged metric) is computed in slices of this many positions to bound memory


def answer_scoring(device: torch.device) -> str:
    """"fused" where trl's fused LM head projects only labelled positions (triton devices), else "gather"."""
    return FUSED if is_triton_available() and device.type in ("cuda", "xpu") else GATHER


def answer_logps(model, kwargs: dict, labels: torch.Tensor, scoring: str, entropy: bool = False):
    """(per-token log-probs [rows, width - 1], per-token entropy or None): log p(token t+1 | tokens <= t) where
    labels[:, t + 1] is a label, 0 elsewhere. `kwargs` are the model inputs without labels."""
    if scoring == FUSED:
        outputs = model(**kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        return outputs.log_probs, outputs.entropy
    if scoring != GATHER:
        raise ValueError(f"answer scoring must be {FUSED!r} or {GATHER!r}, got {scoring!r}")
    targets = labels[:, 1:]
    scored = targets != -100
    # Position t predicts token t + 1: keep the positions whose next token is a label (the last never is).
    keep = torch.nn.functional.pad(scored, (0, 1), value=False)
    logits = model(**kwargs, logits_to_keep=keep, use_cache=False).logits.float()  # [labelled positions, vocab]
    log_z = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets[scored].unsqueeze(-1)).squeeze(-1) - log_z
    per_token = picked.new_zeros(scored.shape).masked_scatter(scored, picked)
    if not entropy:
        return per_token, None
    with torch.no_grad():  # a metric only: no graph, and in slices so no second [positions, vocab] tensor stays
        values = torch.cat([-(part.softmax(-1) * part.log_softmax(-1)).sum(-1)
                            for part in logits.detach().split(ENTROPY_ROWS)]) if logits.numel() else log_z.detach()
        return per_token, values.new_zeros(scored.shape).masked_scatter(scored, values)
