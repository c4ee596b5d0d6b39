"""Vision DPO with trl's loss, computed faster and in less memory: `FastVisionDPOTrainer`.

A `trl.DPOTrainer` whose only overridden hook is `compute_loss`, fed by its own collator
(`align/packing.py`). Same DPOConfig, same loss formulas (sigmoid, hinge, ipo, robust, sft and weighted
mixtures of them), same log-probs; four things differ, each tested against plain trl in
tests/test_fast_dpo.py:

(a) reference log-probs are computed once, before training (shared out across ranks), and cached in the run's
    output folder under a key covering everything they depend on (align/ref_cache.py);
(b) a pair is one packed row: one vision-tower pass and one pass over the shared prompt;
(c) with max_length, only completion text is truncated; a prompt whose image tokens alone reach max_length
    is an error naming the record;
(d) only answer positions go through the LM head on every device (align/answer_logps.py); trl's fused head
    does that on triton devices only and projects every position elsewhere.

The reference is trl's in every case (`_reference`); once its log-probs are attached, trl's reference copy
(full fine-tuning) is released, the accelerator's handle included, so training holds one model.

With `mdpo` set, the loss also gets mDPO's image-conditional and anchor terms (align/mdpo.py): one more
forward per pair over its chosen answer with a corrupted image, whose reference log-prob is precomputed too.

Families that cannot take a custom 4D attention mask are refused here (`packing_unsupported`); the caller
(`align/dpo.py`) falls back to trl's DPOTrainer for them. flex_attention models get the mask as a BlockMask
(align/packing_flex.py); a model loaded with flash_attention_2 has its language model switched to flex.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from trl import DPOTrainer

from halign.align.answer_logps import answer_logps, answer_scoring
from halign.align.packing import CHOSEN, REJECTED, PackedPairCollator, mrope_merge_size, packing_unsupported
from halign.align.packing_families import family_layout
from halign.align.packing_flex import FLEX, pair_block_mask, run_flash_on_flex
from halign.align.packing_video import tokens_per_second

logger = logging.getLogger(__name__)

SUPPORTED_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "sft")
REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")
MDPO_REF_KEY = "ref_corrupted_chosen_logps"  # the chosen answer with the corrupted image (mDPO only)


def per_pair_sums(per_token, pair_index, chosen_mask, rejected_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sums of `per_token` over each pair's tokens, pairs numbered by `pair_index`."""
    pairs = int(pair_index.max()) + 1
    chosen = per_token.new_zeros(pairs).index_add(0, pair_index[chosen_mask], per_token[chosen_mask])
    rejected = per_token.new_zeros(pairs).index_add(0, pair_index[rejected_mask], per_token[rejected_mask])
    return chosen, rejected


def zero3_partitioned(model) -> bool:
    """True when DeepSpeed ZeRO-3 holds `model`'s weights partitioned (each rank keeps a shard)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


@contextlib.contextmanager
def gathered(model, inner):
    """`inner` entered with all of `model`'s ZeRO-3 partitioned weights gathered on every rank (read-only)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None), inner:
        yield


def check_supported(args) -> None:
    """Fail at start-up, naming the setting, for what this trainer does not reproduce."""
    unsupported = [t for t in args.loss_type if t not in SUPPORTED_LOSSES]
    if unsupported:
        raise ValueError(f"fast DPO supports loss_type {list(SUPPORTED_LOSSES)}, not {unsupported}; use fast: false")
    for name, default in (("f_divergence_type", "reverse_kl"), ("ld_alpha", None), ("use_weighting", False),
                          ("sync_ref_model", False), ("precompute_ref_log_probs", False), ("padding_free", False),
                          ("remove_unused_columns", False)):
        value = getattr(args, name)
        if value != default:
            raise ValueError(f"fast DPO needs {name}={default!r} (got {value!r}); use fast: false")


class FastVisionDPOTrainer(DPOTrainer):
    """trl.DPOTrainer for vision preference pairs with precomputed reference log-probs and packed pairs."""

    def __init__(self, model, args, train_dataset, processing_class, peft_config=None, data_collator=None,
                 ref_cache_dir: str | Path | None = None, mdpo=None, row_tokens: int | None = None, **kwargs):
        from halign.align.mdpo import MdpoConfig

        check_supported(args)
        self.mdpo = MdpoConfig.from_setting(mdpo)
        self.ref_keys = REF_KEYS + ((MDPO_REF_KEY,) if self.mdpo else ())
        if kwargs.get("eval_dataset") is not None:
            raise ValueError("fast DPO has no eval_dataset support; use fast: false")
        why = packing_unsupported(model)
        if why:
            raise ValueError(f"fast DPO cannot pack pairs for this model: {why}")
        run_flash_on_flex(model)
        if data_collator is None:
            attention = model.config.get_text_config()._attn_implementation
            data_collator = PackedPairCollator(processing_class, args.max_length,
                                               mask_dtype=torch.bool if attention == "sdpa" else model.dtype,
                                               mdpo=self.mdpo, mrope_merge_size=mrope_merge_size(model),
                                               mrope_tokens_per_second=tokens_per_second(model),
                                               layout=family_layout(model), flex=attention == FLEX,
                                               row_tokens=row_tokens)
        elif self.mdpo is not None and getattr(data_collator, "mdpo", None) != self.mdpo:
            raise ValueError("mdpo is set but the data collator does not build corrupted-image rows with it")
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         peft_config=peft_config, data_collator=data_collator, **kwargs)
        self.answer_scoring = answer_scoring(self.accelerator.device)  # "fused" or "gather": align/answer_logps.py
        self.ref_cache_file: Path | None = None
        self.ref_cache_hit = False
        self.ref_pairs_per_rank: list[int] | None = None  # set when this trainer ran the reference pass
        self.train_dataset = self.attach_ref_logps(self.train_dataset, ref_cache_dir)
        self.release_reference_copy()

    def release_reference_copy(self) -> None:
        """The reference never runs again: drop its weights so training holds one model (full mode)."""
        if self.ref_model is None:
            return
        self.ref_model = None
        # trl prepared the copy with the accelerator, which keeps a reference to every prepared model; nothing
        # else has been prepared yet (the policy is prepared when training starts), so release them all.
        self.accelerator.free_memory()

    # ---- (a) reference log-probs, once per everything they depend on (align/ref_cache.py) --------------------

    def _reference(self):
        """(model, reference adapter name, context) that computes trl's reference: an explicit or trl-loaded
        `ref_model` as given; for PEFT, the policy with the "ref" adapter trl copies from a continued adapter
        (a PeftModel passed in), else with every adapter off."""
        from trl.trainer.utils import use_adapter

        if self.ref_model is not None:
            return self.ref_model, None, contextlib.nullcontext()
        unwrapped = self.accelerator.unwrap_model(self.model)
        if is_peft_model(unwrapped):
            adapter = "ref" if "ref" in unwrapped.peft_config else None  # trl's own choice (compute_ref_log_probs)
            context = use_adapter(unwrapped, adapter_name=adapter)
            if zero3_partitioned(unwrapped):
                # ZeRO-3 partitioned the policy when it loaded, and its engine only exists once training starts:
                # gather the (frozen) weights for this one no-grad pass, then they are partitioned again.
                context = gathered(unwrapped, context)
            return self.model, adapter, context
        # Full fine-tuning after trl's copy was freed: the policy is the reference only before training starts.
        if self.state.global_step > 0:
            raise ValueError("fast DPO: the reference weights were freed when training started; "
                             "pass ref_model to compute reference log-probs now")
        return self.model, None, contextlib.nullcontext()

    def describe_reference_inputs(self, dataset) -> dict:
        """What this trainer's reference log-probs on `dataset` depend on (the cache key's material)."""
        from halign.align import ref_cache

        model, adapter, _ = self._reference()
        ref_model = self.accelerator.unwrap_model(self.ref_model) if self.ref_model is not None else None
        description = ref_cache.describe(model=self.accelerator.unwrap_model(model), ref_model=ref_model,
                                         adapter_name=adapter, processor=self.processing_class, dataset=dataset,
                                         args=self.args, mdpo=self.mdpo, progress=not self.args.disable_tqdm)
        # The two ways of scoring answers agree to float rounding, not bit for bit.
        return {**description, "answer_scoring": self.answer_scoring}

    def attach_ref_logps(self, dataset, cache_dir: str | Path | None = None):
        """`dataset` plus ref_chosen_logps / ref_rejected_logps columns, from the cache or one reference pass."""
        from accelerate.utils import broadcast_object_list

        from halign.align.ref_cache import RefLogpsCache

        # The reference is frozen, so its log-probs are paid once per set of inputs (one no-grad pass, shared
        # out across ranks) instead of a reference forward on every step of every epoch.
        cache_dir = Path(cache_dir) if cache_dir else Path(self.args.output_dir) / "ref_logps"
        values = None
        if self.accelerator.is_main_process:  # one rank hashes and reads; the others get the outcome
            self.ref_cache = RefLogpsCache(cache_dir, self.describe_reference_inputs(dataset))
            values = self.ref_cache.load(self.ref_keys, len(dataset))
            if values is None:
                why = self.ref_cache.explain_miss()
                logger.info("fast DPO: computing reference log-probs (%s)", why or "no cache yet")
            values = None if values is None else {k: values[k].tolist() for k in self.ref_keys}
        shared = broadcast_object_list([values, getattr(self, "ref_cache", None)])
        values, self.ref_cache = shared
        self.ref_cache_file = self.ref_cache.file
        self.ref_cache_hit = values is not None
        if values is None:
            values, per_rank = self.compute_ref_logps(dataset)
            self.ref_pairs_per_rank = per_rank
            if self.accelerator.is_main_process:
                self.ref_cache.save({k: torch.tensor(v) for k, v in values.items()},
                                    computed={"pairs_per_rank": per_rank})
        for key in self.ref_keys:
            if key in dataset.column_names:
                dataset = dataset.remove_columns(key)
            dataset = dataset.add_column(key, list(values[key]))
        return dataset

    @torch.no_grad()
    def compute_ref_logps(self, dataset) -> tuple[dict[str, list[float]], list[int]]:
        """({column: one value per pair}, pairs per rank): each rank runs the reference over its contiguous share
        of `dataset`, and the shares are gathered in rank order."""
        from accelerate.utils import gather_object
        from torch.utils.data import DataLoader

        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        share = -(-len(dataset) // world)
        mine = dataset.select(range(min(rank * share, len(dataset)), min((rank + 1) * share, len(dataset))))
        batch_size = self.args.precompute_ref_batch_size or self.args.per_device_train_batch_size
        loader = DataLoader(mine, batch_size=batch_size, collate_fn=self.data_collator, shuffle=False)
        model, _, context = self._reference()
        columns = {key: [] for key in self.ref_keys}  # chosen, rejected[, chosen with the corrupted image]
        batches = loader
        if not self.args.disable_tqdm and self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            batches = tqdm(loader, desc=f"reference log-probs ({len(mine)} pairs on this rank of {world})")
        with context, self.accelerator.autocast():
            for batch in batches:
                batch = self._prepare_inputs(batch)
                found = list(self._sequence_logps(model, batch)[:2])
                if self.mdpo is not None:
                    found.append(self._sequence_logps(model, batch["corrupted"])[0])
                for key, value in zip(self.ref_keys, found, strict=True):
                    columns[key] += value.float().cpu().tolist()
        shares = gather_object([(rank, columns)]) if world > 1 else [(rank, columns)]
        shares = [part for _, part in sorted(shares, key=lambda item: item[0])]
        values = {key: [v for part in shares for v in part[key]] for key in self.ref_keys}
        return values, [len(part[self.ref_keys[0]]) for part in shares]

    # ---- (b) one packed row per pair ----------------------------------------------------------------------

    def _sequence_logps(self, model, inputs, entropy: bool = False):
        """(chosen_logps, rejected_logps, per-token log-probs, chosen mask, rejected mask, per-token entropy or
        None); only answer positions go through the LM head (align/answer_logps.py)."""
        kwargs = {k: v for k, v in inputs.items() if k not in
                  ("labels", "segments", "record_names", "corrupted", "pair_index", "pair_bounds", *REF_KEYS, MDPO_REF_KEY)}
        if "attention_mask" not in kwargs:  # a flex_attention model: the mask as a block-sparse BlockMask
            kwargs["attention_mask"] = pair_block_mask(inputs["pair_index"], inputs["pair_bounds"])
        # per_token: [rows, width - 1], log p(token t+1 | tokens <= t), 0 where not a label
        per_token, token_entropy = answer_logps(model, kwargs, inputs["labels"], self.answer_scoring, entropy)
        segments = inputs["segments"][:, 1:]
        chosen_mask, rejected_mask = segments == CHOSEN, segments == REJECTED
        # A row may hold several pairs (row_tokens): sum each pair's tokens by its index, not by row.
        pair_index = inputs["pair_index"][:, 1:]
        chosen, rejected = per_pair_sums(per_token, pair_index, chosen_mask, rejected_mask)
        return chosen, rejected, per_token, chosen_mask, rejected_mask, token_entropy

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        if REF_KEYS[0] not in inputs:
            raise ValueError("fast DPO batches need ref_chosen_logps/ref_rejected_logps (attach_ref_logps)")
        chosen_logps, rejected_logps, per_token, chosen_mask, rejected_mask, token_entropy = \
            self._sequence_logps(model, inputs, entropy=True)
        chosen_logratios = chosen_logps - inputs["ref_chosen_logps"]
        rejected_logratios = rejected_logps - inputs["ref_rejected_logps"]
        delta = chosen_logratios - rejected_logratios
        loss = 0.0
        # The formulas are trl's DPOTrainer._compute_loss ones (trl 1.16), for reverse-KL DPO.
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_pair = -F.logsigmoid(self.beta * delta)
            elif loss_type == "hinge":
                per_pair = torch.relu(1 - self.beta * delta)
            elif loss_type == "ipo":
                chosen_tokens, rejected_tokens = per_pair_sums(torch.ones_like(per_token), inputs["pair_index"][:, 1:],
                                                               chosen_mask, rejected_mask)
                ipo_delta = (chosen_logratios / chosen_tokens.clamp(min=1.0)
                             - rejected_logratios / rejected_tokens.clamp(min=1.0))
                per_pair = (ipo_delta - 1 / (2 * self.beta)) ** 2
            elif loss_type == "robust":
                clean = -(1 - self.label_smoothing) * F.logsigmoid(self.beta * delta)
                flipped = -self.label_smoothing * F.logsigmoid(-self.beta * delta)
                per_pair = (clean - flipped) / (1 - 2 * self.label_smoothing)
            elif loss_type == "sft":
                per_pair = (-per_token[chosen_mask].mean()).expand(delta.size(0))
            else:  # check_supported ran at start-up; this guards later edits of loss_types
                raise ValueError(f"fast DPO does not support loss_type {loss_type!r}")
            loss += per_pair.mean() * weight
        if self.mdpo is not None:
            loss = loss + self._mdpo_loss(model, inputs, chosen_logratios, mode)
        if not torch.isfinite(loss):
            # Stop here, naming the step and the records: a NaN would otherwise poison every later step.
            raise FloatingPointError(f"non-finite DPO loss ({loss.item()}) at step {self.state.global_step + 1}, "
                                     f"batch: {', '.join(inputs.get('record_names', []))}")
        self._log_metrics(mode, chosen_logratios, rejected_logratios, chosen_logps, rejected_logps,
                          chosen_mask | rejected_mask, token_entropy)
        return (loss, {"per_token_logps": per_token}) if return_outputs else loss

    def _mdpo_loss(self, model, inputs, chosen_logratios, mode):
        from halign.align.mdpo import mdpo_losses

        if MDPO_REF_KEY not in inputs:
            raise ValueError(f"mDPO batches need {MDPO_REF_KEY} (attach_ref_logps)")
        corrupted_logps = self._sequence_logps(model, inputs["corrupted"])[0]
        corrupted_logratios = corrupted_logps - inputs[MDPO_REF_KEY]
        conditional, anchor = mdpo_losses(self.beta, chosen_logratios, corrupted_logratios, self.mdpo)
        gather, metrics = self.accelerator.gather, self._metrics[mode]
        # How much more the policy (relative to the reference) likes the chosen answer with the real image.
        image_margin = self.beta * (chosen_logratios - corrupted_logratios).detach()
        metrics["mdpo/image_margins"].append(gather(image_margin).mean().item())
        metrics["mdpo/image_accuracies"].append(gather((image_margin > 0).float()).mean().item())
        metrics["mdpo/conditional_loss"].append(gather(conditional.detach()).mean().item())
        metrics["mdpo/anchor_loss"].append(gather(anchor.detach()).mean().item())
        return self.mdpo.conditional_weight * conditional.mean() + self.mdpo.anchor_weight * anchor.mean()

    def _log_metrics(self, mode, chosen_logratios, rejected_logratios, chosen_logps, rejected_logps, mask,
                     token_entropy):
        gather, metrics = self.accelerator.gather, self._metrics[mode]
        chosen_rewards = self.beta * chosen_logratios.detach()
        rejected_rewards = self.beta * rejected_logratios.detach()
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean().item())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean().item())
        metrics["rewards/accuracies"].append(gather((chosen_rewards > rejected_rewards).float()).mean().item())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())
        if token_entropy is not None:
            total = gather(mask.sum()).sum().clamp(min=1)
            metrics["entropy"].append((gather((token_entropy.detach() * mask).sum()).sum() / total).item())
