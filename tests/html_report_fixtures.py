"""Synthetic before/after reports for the HTML report tests and benchmark: real scores of generated texts.

Each item gets its own image (a small drawing, or with `photo=True` a noisy 256x256 picture that compresses
like a photograph: the worst case for the page size), ground-truth shapes, and answers whose mentions are
scored by the same `score_item` that `halign eval` uses, so every field is what a real report holds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from halign.rewards.object_hallucination import ObjectVocabulary, aggregate, score_item

SHAPES = ("circle", "square", "star", "triangle", "heart", "cross")
VOCAB = ObjectVocabulary.from_categories({s: [s + "s"] for s in SHAPES})
COLOURS = ("red", "green", "blue", "yellow")


def _image(path: Path, rng: random.Random, photo: bool) -> None:
    from PIL import Image, ImageDraw

    if photo:
        import numpy as np

        gen = np.random.default_rng(rng.randrange(1 << 30))
        base = np.linspace(0, 255, 256)[None, :, None] * gen.random(3)[None, None, :]
        pixels = np.clip(base + gen.normal(0, 40, (256, 256, 3)), 0, 255).astype("uint8")
        Image.fromarray(pixels).save(path, "JPEG", quality=90)
        return
    image = Image.new("RGB", (48, 48), "white")
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 3)):
        x, y = rng.randrange(0, 36), rng.randrange(0, 36)
        draw.rectangle([x, y, x + 10, y + 10], fill=rng.choice(COLOURS))
    image.save(path)


def _answer(rng: random.Random, truth: list[str], extra: list[str]) -> str:
    parts = [f"a {rng.choice(COLOURS)} {shape}" for shape in truth + extra]
    rng.shuffle(parts)
    return ("There is " + ", ".join(parts) + ".") if parts else "An empty white image."


def write_reports(folder: Path, n: int, n_reports: int = 2, seed: int = 0, photo: bool = False,
                  images: bool = True) -> list[Path]:
    """Reports `r0.json` (baseline) .. `r{n_reports-1}.json` over the same n items; returns their paths."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    items = [[] for _ in range(n_reports)]
    for i in range(n):
        truth = rng.sample(SHAPES, rng.randint(1, 3))
        image = folder / "images" / f"scene{i}.{'jpg' if photo else 'png'}"
        if images:
            _image(image, rng, photo)
        absent = [s for s in SHAPES if s not in truth]
        for j in range(n_reports):
            # Early reports hallucinate more often than later ones; some items lose a true object.
            extra = rng.sample(absent, 1) if rng.random() < 0.5 / (j + 1) else []
            kept = truth if rng.random() > 0.1 else truth[:-1]
            text = _answer(rng, kept, extra)
            items[j].append({"id": f"scene{i}", "text": text, "image": str(image) if images else None,
                             "question": "Describe the image.", **score_item(text, truth, VOCAB)})
    paths = []
    for j, per_item in enumerate(items):
        metrics = aggregate(per_item)
        report = {"model": f"model{j}", "benchmark": "object_chair", "n": metrics["n"], "metrics": metrics,
                  "settings": {"decoding": "greedy", "max_new_tokens": 64}, "missing_ids": [], "per_item": per_item}
        paths.append(folder / f"r{j}.json")
        paths[-1].write_text(json.dumps(report))
    return paths


def write_pope_reports(folder: Path, ids: list[str], n_reports: int = 2, seed: int = 0) -> list[Path]:
    """toy_pope-shaped reports (`halign eval --bench pope`): three questions per scene, per kind."""
    from halign.rewards.toy_pope import score_answers

    rng = random.Random(seed)
    kinds = ("random", "popular", "adversarial")
    questions = [(f"{sid}-pope{q}", sid, kinds[q % 3], rng.choice(SHAPES), rng.choice(("yes", "no")))
                 for sid in ids for q in range(3)]
    paths = []
    for j in range(n_reports):
        per_item = []
        for qid, sid, kind, obj, label in questions:
            pred = label if rng.random() > 0.2 / (j + 1) else ("no" if label == "yes" else "yes")
            per_item.append({"id": qid, "scene_id": sid, "kind": kind, "object": obj,
                             "question": f"Is there a {obj} in the image?", "text": pred.capitalize() + ".",
                             "prediction": pred, "label": label, "correct": pred == label,
                             "image": str(folder / "images" / f"{sid}.png")})
        scored = score_answers(per_item)
        report = {"model": f"model{j}", "benchmark": "toy_pope", "n": len(per_item), "metrics": scored["metrics"],
                  "kinds": scored["kinds"], "settings": {"parser": "pope_reference"}, "per_item": per_item}
        paths.append(folder / f"pope{j}.json")
        paths[-1].write_text(json.dumps(report))
    return paths


def write_judgments(folder: Path, ids: list[str], k: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """judgments.jsonl + candidates.jsonl (+ prompts.jsonl beside it) shaped as the grounding judge's."""
    rng = random.Random(seed)
    (folder / "sample").mkdir(parents=True, exist_ok=True)
    (folder / "judge").mkdir(parents=True, exist_ok=True)
    candidates, judgments, prompts = [], [], []
    for pid in ids:
        prompts.append({"id": pid, "question": "Describe the image.",
                        "images": [str(folder / "images" / f"{pid}.png")]})
        for s in range(k):
            hal = [rng.choice(SHAPES)] if rng.random() < 0.4 else []
            candidates.append({"id": f"{pid}#{s}", "prompt_id": pid, "sample_idx": s,
                               "text": f"a {' and a '.join(['circle', *hal])}"})
            judgments.append({"candidate_id": f"{pid}#{s}", "prompt_id": pid, "judge": "grounding",
                              "score": 1.0 - 2 * len(hal), "hallucinated": hal, "error": None,
                              "rationale": f"covers 1/1 objects, {len(hal)} hallucinated mention(s)"})
    for name, records in (("sample/candidates.jsonl", candidates), ("sample/prompts.jsonl", prompts),
                          ("judge/judgments.jsonl", judgments)):
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder / "judge" / "judgments.jsonl", folder / "sample" / "candidates.jsonl"
