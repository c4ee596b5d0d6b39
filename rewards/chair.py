"""CHAIR (Rohrbach et al., 2018): object hallucination in captions, computed as the reference chair.py does.

A caption is lower-cased, tokenised, lemmatised (`singularize`: the paper's pattern.en rules; `pos`: the
widely copied WordNet-with-POS variant, where "skiing" becomes "ski"), two-word phrases are merged before
single words are looked up ("hot dog", "teddy bear", "baby bird" -> bird, never person), "seat" is dropped
when "toilet" is mentioned, and every remaining word in the synonym list is a mention of its COCO class.

- CHAIR_i = hallucinated mentions / all mentions (with repetition: "a dog ... the dog" is two mentions);
- CHAIR_s = captions with at least one hallucinated mention / captions scored;
- recall  = sum over captions of |ground-truth classes mentioned| / sum of |ground-truth classes|;
- mean_len = mean token count (the reference's `Len` is the same figure divided by 100).

Mode `objhal` follows Object-HalBench (RLAIF-V): mentions are de-duplicated per response (by word, as the
reference de-duplicates extracted object names), responses of <= 3 words have no mentions, CHAIR_s is over
responses with at least one mention, and mean_len counts whitespace words. The reference extracts objects
with an LLM first; this mode applies the same counting rules to the rule-based mentions.

Deviations, on purpose: synonym entries are whitespace-stripped (the original file's stray double spaces
silently disabled "motor bike" and "cheesecake"); records whose id has no ground truth are reported in
`missing_ids` and left out of every ratio (the reference silently scored them against an empty set).
The synonym lists are not vendored: `--synonyms lisaanne|rlaifv` is looked up in $HALIGN_DATA_DIR/coco or
../shared/data/coco beside the repository; any other value is read as a path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from halign.rewards.benchmark_data import data_dir
from halign.rewards.lemmatize import get_lemmatizer, tokenize

SYNONYM_FILES = {"lisaanne": "synonyms_lisaanne.txt", "rlaifv": "synonyms_refine_rlaifv.txt"}
MODES = ("chair", "objhal")

# The paper's hard-coded phrase list (utils/chair.py); RLAIF-V instead takes every multi-word synonym.
_LISAANNE_DOUBLE_WORDS = [
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "bow tie", "laptop computer", "stove top oven", "home plate",
]
# "baby"/"adult"/"passenger" are person synonyms: "baby bird" must count as a bird, not a person.
_ANIMAL_WORDS = ["bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub"]
_VEHICLE_WORDS = ["jet", "train"]


def load_synonyms(spec: str | Path = "lisaanne") -> list[list[str]]:
    """Synonym groups, canonical COCO class first. `spec` is a published list's name or a file path."""
    path = Path(spec)
    if str(spec) in SYNONYM_FILES:
        path = data_dir() / "coco" / SYNONYM_FILES[str(spec)]
        if not path.exists():
            raise FileNotFoundError(f"synonym list {spec!r} not found at {path}; set HALIGN_DATA_DIR or pass "
                                    f"--synonyms PATH to a file with one 'class, synonym, ...' line per class")
    elif not path.exists():
        raise FileNotFoundError(f"synonym list not found: {spec} (names: {sorted(SYNONYM_FILES)})")
    groups = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entries = [e.strip() for e in line.split(",") if e.strip()]
        if entries:
            groups.append(entries)
    return groups


class ChairVocabulary:
    """Precompiled lookups for one synonym list + lemmatizer: turns a caption into COCO-class mentions."""

    def __init__(self, synonyms: str | Path | list[list[str]] = "lisaanne", lemmatizer: str = "singularize"):
        self.synonyms_name = synonyms if isinstance(synonyms, str) else "custom"
        groups = synonyms if isinstance(synonyms, list) else load_synonyms(synonyms)
        self.lemmatizer_name = lemmatizer
        self._lemmatize = get_lemmatizer(lemmatizer)
        self.word_to_object: dict[str, str] = {}
        for group in groups:
            for word in group:
                self.word_to_object[word] = group[0]
        self.objects = sorted({g[0] for g in groups})
        if self.synonyms_name == "rlaifv":
            doubles = [w for w in self.word_to_object if " " in w] + ["home plate", "train track"]
        else:
            doubles = list(_LISAANNE_DOUBLE_WORDS)
        self.double_words = {d: d for d in doubles}
        for animal in _ANIMAL_WORDS:
            self.double_words[f"baby {animal}"] = animal
            self.double_words[f"adult {animal}"] = animal
        for vehicle in _VEHICLE_WORDS:
            self.double_words[f"passenger {vehicle}"] = vehicle
        self.double_words.update({"bow tie": "tie", "toilet seat": "toilet", "wine glas": "wine glass"})
        # Only words that can start a phrase trigger the pair lookup, so most tokens cost one set test.
        self._first_words = frozenset(d.split(" ", 1)[0] for d in self.double_words)

    def words(self, caption: str) -> list[str]:
        """Tokens after lemmatisation and phrase merging (the reference's `words` / `raw_words`)."""
        lemmas = self._lemmatize(tokenize(caption.lower()))
        merged = []
        i, n = 0, len(lemmas)
        first, doubles = self._first_words, self.double_words
        while i < n:
            word = lemmas[i]
            if word in first and i + 1 < n:
                phrase = doubles.get(word + " " + lemmas[i + 1])
                if phrase is not None:
                    merged.append(phrase)
                    i += 2
                    continue
            merged.append(word)
            i += 1
        return merged

    def mentions(self, words: list[str]) -> list[tuple[str, str]]:
        """(word, COCO class) for each object word, in order; "seat" is not a chair next to a toilet."""
        lookup = self.word_to_object
        drop_seat = "toilet" in words and "seat" in words
        return [(w, lookup[w]) for w in words if w in lookup and not (drop_seat and w == "seat")]

    def caption_objects(self, caption: str) -> set[str]:
        return {obj for _, obj in self.mentions(self.words(caption))}


# ---------------------------------------------------------------- ground truth
def _norm_id(value) -> str:
    return str(value)


_TRAILING_DIGITS = re.compile(r"(\d+)(?:\.[A-Za-z]+)?$")


def lookup_gt(gt: dict[str, set[str]], image_id) -> set[str] | None:
    """Exact id first, then the trailing number ("COCO_val2014_000000000042.jpg" and "042" both find 42)."""
    key = _norm_id(image_id)
    if key in gt:
        return gt[key]
    match = _TRAILING_DIGITS.search(key)
    if match:
        return gt.get(str(int(match.group(1))))
    return None


def load_chair_gt(paths: str | Path | Iterable[str | Path], vocab: ChairVocabulary) -> dict[str, set[str]]:
    """Ground-truth classes per image id (str keys) from any mix of:

    - a precomputed JSON object `{image_id: [class, ...]}` (e.g. coco2014_trainval_chair_gt_objects.json),
      or a list of `{"image_id"|"image": ..., "objects": [...]}` records (POPE's segmentation format);
    - COCO `instances_*.json` (category names via the synonym list) and `captions_*.json` (objects the
      reference captions mention, parsed with the same rules), as the paper unions both;
    - a directory holding such COCO files.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    gt: dict[str, set[str]] = {}
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("instances_*.json")) + sorted(p.glob("captions_*.json"))
            if not found:
                raise FileNotFoundError(f"no instances_*.json or captions_*.json in {p}")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"ground truth not found: {p}")
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "annotations" in data:
            if "categories" in data:
                names = {c["id"]: c["name"] for c in data["categories"]}
                for ann in data["annotations"]:
                    name = names[ann["category_id"]]
                    gt.setdefault(_norm_id(ann["image_id"]), set()).add(vocab.word_to_object.get(name, name))
            else:
                for ann in data["annotations"]:
                    gt.setdefault(_norm_id(ann["image_id"]), set()).update(vocab.caption_objects(ann["caption"]))
        elif isinstance(data, dict):
            for key, objects in data.items():
                gt.setdefault(_norm_id(key), set()).update(objects)
        elif isinstance(data, list):
            for rec in data:
                key = rec.get("image_id", rec.get("image"))
                gt.setdefault(_norm_id(key), set()).update(rec.get("objects", []))
        else:
            raise ValueError(f"{path}: unrecognised ground-truth format (expected a JSON object or list)")
    return gt


# ---------------------------------------------------------------- scoring
def score_chair(records: list[dict], gt: dict[str, Iterable[str]], *, id_key: str = "image_id",
                caption_key: str = "caption", lemmatizer: str = "singularize",
                synonyms: str | Path | list[list[str]] = "lisaanne", mode: str = "chair",
                vocab: ChairVocabulary | None = None) -> dict:
    """Score captions against ground-truth class sets; returns the report dict (fractions in [0, 1])."""
    if mode not in MODES:
        raise ValueError(f"unknown CHAIR mode {mode!r}; choose one of {list(MODES)}")
    vocab = vocab or ChairVocabulary(synonyms, lemmatizer)
    gt_sets = {_norm_id(k): set(v) for k, v in gt.items()}
    objhal = mode == "objhal"
    per_item, missing = [], []
    n_hall_caps = n_with_mentions = n_mentions = n_hall = n_covered = n_gt = total_len = 0
    for i, rec in enumerate(records):
        if id_key not in rec:
            raise ValueError(f"record {i} has no {id_key!r} key (keys: {sorted(rec)}); set --id-key")
        rid = rec[id_key]
        caption = rec.get(caption_key)
        if caption is None:
            caption = ""
        elif not isinstance(caption, str):
            raise ValueError(f"record {i} ({id_key}={rid!r}): {caption_key!r} is a {type(caption).__name__}, "
                             f"expected a string")
        gt_objects = lookup_gt(gt_sets, rid)
        if gt_objects is None:
            missing.append(rid)
            continue
        words = vocab.words(caption)
        mentions = vocab.mentions(words)
        if objhal:
            if len(caption.split()) <= 3:
                mentions = []
            seen: set[str] = set()
            mentions = [m for m in mentions if not (m[0] in seen or seen.add(m[0]))]
            length = len(caption.split())
        else:
            length = len(words)
        hallucinated = [(w, o) for w, o in mentions if o not in gt_objects]
        covered = {o for _, o in mentions if o in gt_objects}
        n_mentions += len(mentions)
        n_hall += len(hallucinated)
        n_hall_caps += bool(hallucinated)
        n_with_mentions += bool(mentions)
        n_covered += len(covered)
        n_gt += len(gt_objects)
        total_len += length
        per_item.append({
            "id": rid,
            "mentioned_words": [w for w, _ in mentions],
            "mapped_objects": [o for _, o in mentions],
            "hallucinated_words": [w for w, _ in hallucinated],
            "hallucinated_objects": [o for _, o in hallucinated],
            "ground_truth": sorted(gt_objects),
            "chair_s": int(bool(hallucinated)),
            "chair_i": len(hallucinated) / len(mentions) if mentions else 0.0,
            "recall": len(covered) / len(gt_objects) if gt_objects else 0.0,
            "len": length,
        })
    n = len(per_item)
    caps_denominator = n_with_mentions if objhal else n
    metrics = {
        "chair_s": n_hall_caps / caps_denominator if caps_denominator else 0.0,
        "chair_i": n_hall / n_mentions if n_mentions else 0.0,
        "recall": n_covered / n_gt if n_gt else 0.0,
        "mean_len": total_len / n if n else 0.0,
    }
    return {
        "benchmark": "chair", **metrics, "n": n, "lemmatizer": vocab.lemmatizer_name,
        "synonyms": vocab.synonyms_name, "mode": mode, "metrics": dict(metrics),
        "n_mentions": n_mentions, "n_hallucinated_mentions": n_hall, "n_with_mentions": n_with_mentions,
        "n_missing": len(missing), "missing_ids": missing, "per_item": per_item,
    }


class ChairMetric:
    """`Metric` protocol: responses carry `id_key`/`caption_key`; references map id -> classes (or a
    record with `objects`)."""

    name = "chair"

    def __init__(self, lemmatizer: str = "singularize", synonyms: str | Path | list[list[str]] = "lisaanne",
                 mode: str = "chair", id_key: str = "image_id", caption_key: str = "caption"):
        self.vocab = ChairVocabulary(synonyms, lemmatizer)
        self.mode, self.id_key, self.caption_key = mode, id_key, caption_key

    def score(self, responses: list[dict], references: dict) -> dict:
        # A reference record without `objects` has no ground truth: its id is reported as missing.
        gt = {k: (v["objects"] if isinstance(v, dict) else v) for k, v in references.items()
              if not isinstance(v, dict) or "objects" in v}
        return score_chair(responses, gt, id_key=self.id_key, caption_key=self.caption_key, mode=self.mode,
                           vocab=self.vocab)
