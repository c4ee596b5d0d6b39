"""Preference pairs from judged candidates, in TRL's conversational vision format.

Strategies (per prompt, over its successfully judged candidates):
  best_vs_worst   the highest- against the lowest-scored candidate;
  gap             every pair whose score gap is >= min_gap, largest gaps first, at most `sample_num`;
  corrected       the judge's corrected response (hallucinations removed) against the original.
Ties are always dropped. Two optional filters guard against the two ways DPO buys lower hallucination
with something else: `keep_coverage` drops pairs whose chosen side mentions fewer ground-truth objects
than the rejected side (else the model learns to say less, and recall falls), and `min_length_ratio`
drops pairs whose chosen side is much shorter than the rejected one (RLAIF-V's length balance).

`balance_lengths` balances the whole pair set instead of filtering pair by pair: among the pairs whose two
answers differ in length (words), as many keep a shorter chosen side as a longer one (the larger group is
subsampled at random, seeded; equal-length pairs all stay). Why: a hallucination is most often an *extra*
item, so most pairs have the shorter answer chosen, and DPO then learns the cheapest feature that separates
them, ending the list one item earlier, rather than which item is invented. In the toy world (seed 4) 468 of
732 caption pairs of a round had the chosen side shorter; the policy kept its invented partners and dropped the
last true object instead (recall 0.986 -> 0.906). `min_length_ratio` removes the same bias by dropping every
shorter-chosen pair, which removes most of the hallucination signal with it.

Native video prompts (a prompt record with `video`: its frame paths, and `video_fps`, from a video source with
`as: video`) give pairs whose dataset rows have two more columns (`to_dataset`), present whenever any pair
has a video:
  videos      a list of clips, each a list of frame images (decoded lazily like `images`), in the order of
              the prompt's {"type": "video"} parts, which training inserts before its image parts
  video_fps   one sampling rate per clip (frames per second, null when unknown): it spaces the clip's
              temporal rope positions on Qwen2.5-VL
Training takes them on both DPO paths (align/packing_video.py); `images` stays the prompt's still images.
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from halign.data_gen.fields import add_flags, field
from halign.data_gen.io import ensure_writable_dir, read_records, write_json, write_manifest

STRATEGIES = ("best_vs_worst", "gap", "corrected")


@dataclass
class PairsConfig:
    # Each field's help lives in its metadata: `halign pairs`, `halign gen-pairs` and recipe errors read it.
    strategy: str = field("gap", help=f"how pairs are formed: {', '.join(STRATEGIES)}", choices=STRATEGIES)
    min_gap: float = field(1.0, help="smallest judge-score gap between chosen and rejected")
    sample_num: int = field(2, help="most pairs per prompt")
    keep_coverage: bool = field(True, help="drop pairs whose chosen answer has fewer true objects than the rejected")
    min_length_ratio: float | None = field(None, help="drop a pair whose chosen answer has fewer words than this "
                                                      "fraction of the rejected one's")
    balance_lengths: bool = field(False, help="as many pairs with the shorter answer chosen as with the longer one")
    seed: int = field(0, help="seeds which pairs a prompt keeps")

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.min_gap <= 0:
            raise ValueError("min_gap must be > 0 (ties are never pairs)")
        if self.sample_num < 1:
            raise ValueError("sample_num must be >= 1")


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _allowed(cfg: PairsConfig, chosen: dict, rejected: dict) -> str | None:
    """None if the pair passes the filters, else the reason it is dropped."""
    if chosen["text"].strip() == rejected["text"].strip():
        return "identical"
    if cfg.keep_coverage and "covered" in chosen["judgment"] and "covered" in rejected["judgment"]:
        if len(chosen["judgment"]["covered"]) < len(rejected["judgment"]["covered"]):
            return "coverage_loss"
    if cfg.min_length_ratio and _words(chosen["text"]) / _words(rejected["text"]) < cfg.min_length_ratio:
        return "length"
    return None


def select_pairs(cfg: PairsConfig, scored: list[dict], rng: random.Random) -> tuple[list[tuple[dict, dict]], dict]:
    """Pairs (chosen, rejected) for one prompt; `scored` are candidates with their `judgment` attached."""
    dropped: dict[str, int] = defaultdict(int)
    if cfg.strategy == "corrected":
        pairs = []
        for cand in scored:
            corrected = (cand["judgment"].get("corrected") or "").strip()
            if corrected and corrected != cand["text"].strip():
                pairs.append(({**cand, "text": corrected, "score": None}, cand))
        rng.shuffle(pairs)
        return pairs[: cfg.sample_num], dropped
    ranked = sorted(scored, key=lambda c: -c["score"])
    if cfg.strategy == "best_vs_worst":
        options = [(ranked[0], ranked[-1])] if len(ranked) >= 2 else []
    else:
        options = [(a, b) for a, b in itertools.combinations(ranked, 2)]
        rng.shuffle(options)  # random among equal gaps, then largest gap first
        options.sort(key=lambda p: -(p[0]["score"] - p[1]["score"]))
    pairs = []
    used = set()
    for chosen, rejected in options:
        gap = chosen["score"] - rejected["score"]
        if gap <= 0:
            dropped["tie"] += 1
            continue
        if gap < cfg.min_gap:
            dropped["small_gap"] += 1
            continue
        reason = _allowed(cfg, chosen, rejected)
        if reason:
            dropped[reason] += 1
            continue
        # Each candidate used at most once as rejected keeps one bad sample from dominating a prompt.
        if rejected["id"] in used:
            continue
        used.add(rejected["id"])
        pairs.append((chosen, rejected))
        if len(pairs) >= cfg.sample_num:
            break
    return pairs, dropped


def build_pairs(cfg: PairsConfig, prompts: dict[str, dict], candidates: list[dict], judgments: list[dict]) -> tuple[list[dict], dict]:
    """Pair rows (plain dicts; image paths, not pixels) and a summary."""
    by_id = {j["candidate_id"]: j for j in judgments}
    per_prompt: dict[str, list[dict]] = defaultdict(list)
    failed = 0
    for cand in candidates:
        judgment = by_id.get(cand["id"])
        if judgment is None or judgment.get("score") is None:
            failed += 1
            continue
        per_prompt[cand["prompt_id"]].append({**cand, "score": float(judgment["score"]), "judgment": judgment})
    rng = random.Random(cfg.seed)
    rows, dropped_total = [], defaultdict(int)
    missing_prompts = []
    for prompt_id in sorted(per_prompt):
        prompt = prompts.get(prompt_id)
        if prompt is None:
            missing_prompts.append(prompt_id)
            continue
        if not prompt.get("question"):  # the pair's prompt turn is the question's text
            raise ValueError(f"prompt record {prompt_id!r} has no 'question' (the pairs' prompt text); prompt "
                             f"records from data_gen/sources.py always have one")
        pairs, dropped = select_pairs(cfg, per_prompt[prompt_id], rng)
        for k, v in dropped.items():
            dropped_total[k] += v
        for chosen, rejected in pairs:
            rows.append({
                "prompt_id": prompt_id,
                "image_paths": list(prompt.get("images", [])),
                # A native video prompt: one clip (its frame paths) and the rate its frames were sampled at.
                "video_paths": [list(prompt["video"])] if prompt.get("video") else [],
                "video_fps": [prompt.get("video_fps")] if prompt.get("video") else [],
                "prompt": [{"role": "user", "content": prompt["question"]}],
                "chosen": [{"role": "assistant", "content": chosen["text"]}],
                "rejected": [{"role": "assistant", "content": rejected["text"]}],
                "chosen_score": chosen["score"] if chosen["score"] is not None else float("nan"),
                "rejected_score": rejected["score"],
                "judge": rejected["judgment"].get("judge", "unknown"),
            })
    if cfg.balance_lengths:
        rows, balance = balance_by_length(rows, rng)
        dropped_total["length_balance"] += balance.pop("dropped")
    margins = [r["chosen_score"] - r["rejected_score"] for r in rows if r["chosen_score"] == r["chosen_score"]]
    len_ratio = [_words(r["chosen"][0]["content"]) / _words(r["rejected"][0]["content"]) for r in rows]
    summary = {
        "pairs": len(rows), "prompts_with_pairs": len({r["prompt_id"] for r in rows}),
        "prompts_judged": len(per_prompt), "candidates_without_judgment": failed,
        "pairs_per_prompt": len(rows) / len(per_prompt) if per_prompt else 0.0,
        "mean_margin": sum(margins) / len(margins) if margins else None,
        "mean_length_ratio": sum(len_ratio) / len(len_ratio) if len_ratio else None,
        "dropped": dict(dropped_total), "missing_prompts": missing_prompts,
    }
    if cfg.balance_lengths:
        summary["length_balance"] = balance
    return rows, summary


def _length_sign(row: dict) -> int:
    """-1: the chosen answer is shorter than the rejected one (words), +1: longer, 0: as long."""
    chosen, rejected = _words(row["chosen"][0]["content"]), _words(row["rejected"][0]["content"])
    return (chosen > rejected) - (chosen < rejected)


def balance_by_length(rows: list[dict], rng: random.Random) -> tuple[list[dict], dict]:
    """`rows` with as many shorter-chosen as longer-chosen pairs (the larger group subsampled, order kept),
    and the counts before balancing."""
    groups = {-1: [], 0: [], 1: []}
    for i, row in enumerate(rows):
        groups[_length_sign(row)].append(i)
    n = min(len(groups[-1]), len(groups[1]))
    keep = set(groups[0]) | set(rng.sample(groups[-1], n)) | set(rng.sample(groups[1], n))
    counts = {"chosen_shorter": len(groups[-1]), "chosen_longer": len(groups[1]), "same_length": len(groups[0]),
              "dropped": len(rows) - len(keep)}
    return [row for i, row in enumerate(rows) if i in keep], counts


def to_dataset(rows: list[dict]):
    """HF dataset in TRL's conversational vision format (images decoded lazily by `datasets`), plus the
    `videos` / `video_fps` columns (see the module docstring) when any row has `video_paths`."""
    import datasets

    columns = {
        "images": datasets.Sequence(datasets.Image()),
        "prompt": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "chosen": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "rejected": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        "chosen_score": datasets.Value("float64"),
        "rejected_score": datasets.Value("float64"),
        "judge": datasets.Value("string"),
        "prompt_id": datasets.Value("string"),
    }
    if any(row.get("video_paths") for row in rows):
        columns["videos"] = datasets.Sequence(datasets.Sequence(datasets.Image()))
        columns["video_fps"] = datasets.Sequence(datasets.Value("float64"))
    features = datasets.Features(columns)
    lists = {"images": "image_paths", "videos": "video_paths", "video_fps": "video_fps"}  # [] when absent
    data = {name: [row.get(lists[name], []) if name in lists else row[name] for row in rows] for name in features}
    return datasets.Dataset.from_dict(data, features=features)


def run(cfg: PairsConfig, judgments_path: str | Path, candidates_path: str | Path, prompts_path: str | Path,
        out_dir: str | Path) -> Path:
    started = time.time()
    out_dir = ensure_writable_dir(out_dir)
    prompts = {p["id"]: p for p in read_records(prompts_path)}
    rows, summary = build_pairs(cfg, prompts, read_records(candidates_path), read_records(judgments_path))
    if not rows:
        raise ValueError(f"no preference pairs could be built ({summary['dropped']}); lower min_gap or sample more")
    dataset_dir = out_dir / "dataset"
    to_dataset(rows).save_to_disk(str(dataset_dir))
    write_json(out_dir / "summary.json", summary)
    write_manifest(out_dir, "pairs", asdict(cfg), {"judgments": judgments_path, "candidates": candidates_path,
                                                   "prompts": prompts_path}, started, extra={"summary": summary})
    return dataset_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judgments", required=True, help="judgments.jsonl (output of halign judge)")
    parser.add_argument("--candidates", required=True, help="candidates.jsonl (output of halign sample)")
    parser.add_argument("--prompts", required=True, help="the prompt records the candidates answer")
    parser.add_argument("--out", required=True, help="output folder: dataset/, summary.json, manifest.json")
    add_flags(parser, PairsConfig, [f.name for f in fields(PairsConfig)])  # types, defaults, help: the fields'


def main(args: argparse.Namespace) -> int:
    cfg = PairsConfig(**{f.name: getattr(args, f.name) for f in fields(PairsConfig)})
    out = run(cfg, args.judgments, args.candidates, args.prompts, args.out)
    print(out)
    return 0
