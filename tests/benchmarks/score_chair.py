"""Benchmark: CHAIR scoring throughput on 10,000 synthetic detailed captions (~100 words each), one core.

Run standalone: `python tests/benchmarks/score_chair.py [--n 10000] [--lemmatizer singularize|pos]`.
The target is >= 2,000 captions/s. Captions are synthesised from COCO object words and filler sentences,
so no data file is needed; the first pass over the vocabulary warms the per-word caches, as in real use.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from halign.rewards.chair import ChairVocabulary, score_chair

OBJECT_WORDS = ["man", "woman", "dogs", "cat", "bicycle", "car", "hot dogs", "teddy bear", "toilet seat",
                "dining table", "chairs", "cups", "pizza", "umbrella", "people", "skis", "wine glasses",
                "children", "laptop", "knives", "buses", "traffic light", "baby bird", "surfboard", "bench"]
FRAMES = ["The image shows {a} next to {b}.", "In the background, there are {a} and a few {b}, possibly "
          "waiting for someone.", "A {a} is sitting on the {b}, while the scene captures a calm moment.",
          "Several {a} can be seen near the {b}, suggesting a busy and lively atmosphere in the area.",
          "It's a sunny day, and the {a} isn't far from the {b}; everyone seems relaxed."]
CLASSES = ["person", "dog", "cat", "bicycle", "car", "hot dog", "teddy bear", "toilet", "dining table",
           "chair", "cup", "pizza", "umbrella", "skis", "wine glass", "laptop", "knife", "bus", "bird"]


def synth(n: int, seed: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    rng = random.Random(seed)
    records, gt = [], {}
    for i in range(n):
        sentences, words = [], 0
        while words < 100:
            s = rng.choice(FRAMES).format(a=rng.choice(OBJECT_WORDS), b=rng.choice(OBJECT_WORDS))
            sentences.append(s)
            words += len(s.split())
        records.append({"image_id": i, "caption": " ".join(sentences)})
        gt[str(i)] = rng.sample(CLASSES, 5)
    return records, gt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--lemmatizer", default="singularize", choices=["singularize", "pos"])
    args = parser.parse_args(argv)
    records, gt = synth(args.n)
    mean_words = sum(len(r["caption"].split()) for r in records) / len(records)
    vocab = ChairVocabulary("lisaanne", args.lemmatizer)
    start = time.perf_counter()
    report = score_chair(records, gt, vocab=vocab)
    elapsed = time.perf_counter() - start
    rate = len(records) / elapsed
    print(f"scored {len(records)} captions (~{mean_words:.0f} words each, lemmatizer={args.lemmatizer}) "
          f"in {elapsed:.2f} s: {rate:,.0f} captions/s  (target >= 2,000)  "
          f"chair_s={report['chair_s']:.3f} chair_i={report['chair_i']:.3f}")
    return 0 if rate >= 2000 else 1


if __name__ == "__main__":
    sys.exit(main())
