"""Sampling: K candidate answers per prompt with a checkpoint (batched Hugging Face generate).

Prompts are batched and left-padded (decoder-only generation continues from the right edge), each
prompt is expanded to K sequences inside `generate` (`num_return_sequences`), identical candidates of a
prompt are dropped, and `--shard i/n` lets N processes each take every n-th prompt and write their own
shard file. Greedy decoding (K=1, temperature 0) is the same code path, used by evaluation.

Native video records (`video`: frame paths, `video_fps`; data_gen/sources.py `as: video`) are generated from
with the model's own video inputs (align/video_processor.build_video_inputs: Qwen2-VL / Qwen2.5-VL,
LLaVA-NeXT-Video), see `prompt_inputs`; their candidates point at the record, whose clip reaches the pairs.

`complete_yes_no`: when every sample of a prompt is a bare yes/no answer ("Yes.", "no") and only one of the
two was sampled, the other is added as a candidate (`"origin": "completed"`), for the judge to score like
any other. A confident policy samples one answer to a yes/no question K times out of K, so without this such
prompts give no preference pair at all, and the yes/no skill gets no training signal while the captions
move the shared weights: in the toy world only 9-13 of 150 asked questions per round formed a pair, and the
yes-ratio on absent objects crept up round after round (README, "What the demo shows").
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from halign.data_gen.fields import add_flags, field
from halign.data_gen.io import ensure_writable_dir, read_records, write_jsonl, write_manifest
from halign.data_gen.messages import load_images, load_video, user_messages


@dataclass
class SampleConfig:
    # Each field's help lives in its metadata: `halign sample`, `halign gen-pairs` and recipe errors read it.
    model: str = field(help="checkpoint folder or hub id (loaded with the Auto classes)")
    k: int = field(8, help="candidate answers per prompt")
    temperature: float = field(1.0, help="sampling temperature; 0 = greedy (then k must be 1)")
    top_p: float = field(1.0, help="nucleus sampling: keep the smallest token set with this much probability")
    max_new_tokens: int = field(64, help="longest answer, in tokens")
    batch_size: int = field(32, help="prompts per generate call (each expands to k sequences)")
    seed: int = field(0, help="seeds the sampling")
    dedupe: bool = field(True, help="drop identical candidates of a prompt")
    shard: str = field("0/1", help="i/n: take every n-th prompt from the i-th, for n processes sharing the work")
    dtype: str = field("float32", help="weights dtype: float32, bfloat16, float16")
    device: str | None = field(None, help="torch device (default: cuda when available, else cpu)")
    backend: str = field("hf", help="hf (batched transformers generate) or vllm (needs the vllm extra)")
    complete_yes_no: bool = field(False, help="add the unsampled answer to prompts whose samples are all the "
                                              "same bare yes/no answer (module docstring)")

    def __post_init__(self):
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must lie in (0, 1]")
        if self.temperature == 0 and self.k > 1:
            raise ValueError("greedy decoding (temperature 0) gives one answer: set k=1 or temperature > 0")
        parse_shard(self.shard)
        if self.backend not in ("hf", "vllm"):
            raise ValueError(f"backend must be 'hf' or 'vllm', got {self.backend!r}")


def parse_shard(spec: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard index must satisfy 0 <= i < n, got {spec!r}")
    return index, count


@torch.no_grad()
def generate_texts(model, processor, records: list[dict], k: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                   max_new_tokens: int = 64, batch_size: int = 32, seed: int = 0, desc: str = "generating",
                   progress: bool = True) -> list[list[str]]:
    """K generated answers for every record (in order). temperature 0 means greedy."""
    from tqdm.auto import tqdm

    tokenizer = processor.tokenizer
    device = next(model.parameters()).device
    outputs: list[list[str]] = []
    bar = tqdm(total=len(records) * k, desc=desc, unit="cand", disable=not progress, mininterval=1.0)
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        inputs, copies = prompt_inputs(processor, batch, k)
        # One seed per batch: reproducible for a given seed, shard and batch size.
        torch.manual_seed(seed + start)
        sampling = temperature > 0
        generated = model.generate(
            **inputs.to(device), max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=copies,
            temperature=temperature if sampling else None, top_p=top_p if sampling else None,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        decoded = tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        for i in range(len(batch)):
            outputs.append([t.strip() for t in decoded[i * k : (i + 1) * k]])
        bar.update(len(batch) * k)
    bar.close()
    return outputs


def prompt_inputs(processor, records: list[dict], k: int):
    """(model inputs, num_return_sequences) for a batch of prompt records, left-padded; the rows of
    `generate`'s output are then each record's k answers in turn.

    A batch with native video records gets the model's own video inputs (align/video_processor.py:
    Qwen2-VL / Qwen2.5-VL, LLaVA-NeXT-Video), with every record repeated k times here and one sequence
    each: LLaVA-NeXT-Video lays clips of different lengths end to end in one tensor, which generate's
    per-row expansion would pair with the wrong rows. generate repeats a prompt k times before its
    first forward either way, so this costs no extra compute.
    """
    texts = [processor.apply_chat_template(user_messages(r), add_generation_prompt=True, tokenize=False)
             for r in records]
    images = [load_images(r) for r in records]
    videos = [load_video(r) for r in records]
    if not any(video is not None for video in videos):
        return processor(images=images if any(images) else None, text=texts, padding=True, padding_side="left",
                         return_tensors="pt", add_special_tokens=False), k
    from halign.align.video_processor import build_video_inputs

    rows = [i for i in range(len(records)) for _ in range(k)]
    clips = [videos[i] for i in rows if videos[i] is not None]
    fps = [records[i].get("video_fps") for i in rows if videos[i] is not None]
    try:
        inputs = build_video_inputs(processor, [texts[i] for i in rows], clips,
                                    images=[image for i in rows for image in images[i]] or None, fps=fps,
                                    padding_side="left", add_special_tokens=False)
    except ValueError as err:  # e.g. a template without a video placeholder: name the records
        ids = [r.get("id") for r, video in zip(records, videos) if video is not None]
        raise ValueError(f"video records {ids}: {err}") from None
    return inputs, 1


YES_NO = re.compile(r"^(yes|no)([.!]?)$", re.IGNORECASE)
OPPOSITE = {"yes": "no", "no": "yes"}


def other_answer(answers: list[str]) -> str | None:
    """The unsampled answer of a yes/no prompt, in the samples' own spelling ("Yes." -> "No."), or None when the
    samples are not all bare yes/no answers or already hold both."""
    matches = [YES_NO.match(a.strip()) for a in answers]
    if not answers or not all(matches):
        return None
    words = {m.group(1).lower() for m in matches}
    if len(words) != 1:
        return None
    word, punct = matches[0].group(1), matches[0].group(2)
    other = OPPOSITE[word.lower()]
    return (other.capitalize() if word[0].isupper() else other) + punct


def run(cfg: SampleConfig, prompts_path: str | Path, out_dir: str | Path, model=None, processor=None,
        progress: bool = True) -> Path:
    """Sample candidates for every readable prompt; returns the candidates file."""
    from halign.align.model import load_policy

    started = time.time()
    out_dir = ensure_writable_dir(out_dir)
    index, count = parse_shard(cfg.shard)
    prompts = read_records(prompts_path)[index::count]
    usable, skipped = [], []
    for rec in prompts:
        try:
            if "id" not in rec:
                raise ValueError("record has no 'id'")
            user_messages(rec)
            load_images(rec)
            load_video(rec)
            usable.append(rec)
        except ValueError as err:
            skipped.append({"id": rec.get("id"), "reason": str(err)})
    if cfg.backend == "vllm":
        from halign.data_gen.vllm_backend import generate_texts_vllm

        native = [rec["id"] for rec in usable if rec.get("video")]
        if native:
            raise ValueError(f"the vllm backend samples image prompts only; {len(native)} record(s) have a native "
                             f"video (e.g. {native[0]!r}): use backend 'hf'")

        texts = generate_texts_vllm(cfg.model, usable, cfg.k, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                                    cfg.seed)
    else:
        if model is None:
            model, processor = load_policy(cfg.model, cfg.dtype, cfg.device)
        texts = generate_texts(model, processor, usable, cfg.k, cfg.temperature, cfg.top_p, cfg.max_new_tokens,
                               cfg.batch_size, cfg.seed, desc="sampling", progress=progress)
    candidates, duplicates, completed = [], 0, 0
    params = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
              "seed": cfg.seed}
    for rec, answers in zip(usable, texts):
        seen = set()
        for sample_idx, text in enumerate(answers):
            if cfg.dedupe and text in seen:
                duplicates += 1
                continue
            seen.add(text)
            candidates.append({"id": f"{rec['id']}#{sample_idx}", "prompt_id": rec["id"], "sample_idx": sample_idx,
                               "text": text, "params": params, "model": str(cfg.model)})
        other = other_answer(answers) if cfg.complete_yes_no else None
        if other is not None:
            completed += 1
            candidates.append({"id": f"{rec['id']}#completed", "prompt_id": rec["id"], "sample_idx": len(answers),
                               "text": other, "params": params, "model": str(cfg.model), "origin": "completed"})
    suffix = "" if count == 1 else f".shard-{index}-of-{count}"
    out = write_jsonl(out_dir / f"candidates{suffix}.jsonl", candidates)
    write_jsonl(out_dir / f"prompts{suffix}.jsonl", usable)
    seconds = time.time() - started
    write_manifest(out_dir, "sample", asdict(cfg), {"prompts": prompts_path}, started, extra={
        "prompts": len(usable), "skipped": skipped, "candidates": len(candidates), "duplicates_dropped": duplicates,
        "yes_no_completed": completed,
        "candidates_per_second": round(len(usable) * cfg.k / seconds, 2) if seconds else None,
    })
    if skipped:
        print(f"sample: skipped {len(skipped)} prompt(s); first: {skipped[0]['id']}: {skipped[0]['reason']}")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, SampleConfig, [f.name for f in fields(SampleConfig)])  # types, defaults, help: the fields'
    parser.add_argument("--prompts", required=True, help="prompt records (JSONL or JSON list)")
    parser.add_argument("--out", required=True, help="output folder")


def main(args: argparse.Namespace) -> int:
    cfg = SampleConfig(**{f.name: getattr(args, f.name) for f in fields(SampleConfig)})
    print(run(cfg, args.prompts, args.out))
    return 0
