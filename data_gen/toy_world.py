"""The toy world: synthetic scenes with exact ground truth, the project's embedded default.

No model or dataset can be downloaded on a fresh machine, so halign brings its own small world:
Pillow-drawn scenes of coloured shapes on a grid, each with
  (a) exact ground truth (category, colour, grid cell, pixel centre and size of every object),
  (b) an accurate *detailed caption* — what judges see, like ShareGPT4V / LLaVA-Hound captions,
  (c) *noisy SFT captions* with co-occurrence bias: when one member of a co-occurrence pair is drawn and
      its partner is not, the caption still mentions the partner with probability `bias_rate` (web and
      GPT-written captions do exactly this: "a dining table with chairs"), and
  (d) POPE-style yes/no existence questions with random, popular and adversarial negatives.
A model fine-tuned on (c) learns the language prior and hallucinates partners, as real MLLMs do.

Everything is seeded per scene (hash of seed, split, index), so scene i of a split is the same bytes
whatever else is generated, and splits never share a scene stream.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
POSITION_NAMES = {  # (row, col) on the 3x3 grid -> phrase
    (0, 0): "at the top left", (0, 1): "at the top", (0, 2): "at the top right",
    (1, 0): "on the left", (1, 1): "in the center", (1, 2): "on the right",
    (2, 0): "at the bottom left", (2, 1): "at the bottom", (2, 2): "at the bottom right",
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
CAPTION_PROMPT = "Describe the image."
QUESTION_TEMPLATE = "Is there a {} in the image?"  # POPE's template
# Share of each round's toy-world training prompts that ask a yes/no existence question instead of a caption
# (the default of `halign rlaif` and `halign demo`). Trained on captions only, the policy's short-answer skill
# drifts (toy POPE falls); with a quarter of the prompts asking, the judge's right/wrong verdicts train it too
# (README, "What the demo shows").
TOY_QA_FRACTION = 0.25
BACKGROUND = (245, 245, 240)


@dataclass(frozen=True)
class ToyWorldConfig:
    seed: int = 0
    image_size: int = 48
    grid: int = 3
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    min_objects: int = 1
    max_objects: int = 4
    # Co-occurrence pairs: in scenes the partner is drawn alongside with `pair_rate`; in noisy SFT
    # captions an absent partner is mentioned anyway with `bias_rate`.
    cooccurrence: tuple[tuple[str, str], ...] = (("circle", "square"), ("triangle", "star"))
    pair_rate: float = 0.4
    bias_rate: float = 0.7

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown:
            raise ValueError(f"toy world: unknown shapes {unknown}; known: {list(SHAPES)}")
        unknown = [c for c in self.colors if c not in COLORS]
        if unknown:
            raise ValueError(f"toy world: unknown colors {unknown}; known: {list(COLORS)}")
        if self.image_size % self.grid:
            raise ValueError("toy world: image_size must be a multiple of grid")
        if not 1 <= self.min_objects <= self.max_objects <= min(self.grid**2, len(self.shapes)):
            raise ValueError("toy world: need 1 <= min_objects <= max_objects <= min(grid cells, shapes)")
        for pair in self.cooccurrence:
            if len(pair) != 2 or any(p not in self.shapes for p in pair):
                raise ValueError(f"toy world: co-occurrence pair {pair} must name two configured shapes")
        if not (0 <= self.pair_rate <= 1 and 0 <= self.bias_rate <= 1):
            raise ValueError("toy world: pair_rate and bias_rate must lie in [0, 1]")

    @property
    def partners(self) -> dict[str, list[str]]:
        """Symmetric co-occurrence partners of every shape."""
        out: dict[str, list[str]] = {s: [] for s in self.shapes}
        for a, b in self.cooccurrence:
            out[a].append(b)
            out[b].append(a)
        return out

    def vocabulary(self) -> dict[str, list[str]]:
        """Object categories and the words that mention them (for mention extraction)."""
        return {s: [s, s + "s"] for s in self.shapes}


@dataclass
class ToyObject:
    shape: str
    color: str
    row: int
    col: int
    cx: int
    cy: int
    size: int  # half-extent in pixels

    @property
    def position(self) -> str:
        return POSITION_NAMES[(self.row, self.col)]


@dataclass
class Scene:
    id: str
    split: str
    index: int
    objects: list[ToyObject]
    noisy_caption: str
    hallucinated_in_noisy: list[str]
    questions: list[dict] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({o.shape for o in self.objects})

    @property
    def detailed_caption(self) -> str:
        return detailed_caption(self.objects)


def scene_rng(seed: int, split: str, index: int) -> random.Random:
    digest = hashlib.sha256(f"halign-toy:{seed}:{split}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _sample_objects(cfg: ToyWorldConfig, rng: random.Random) -> list[ToyObject]:
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    shapes: list[str] = []
    pool = list(cfg.shapes)
    while len(shapes) < n:
        shape = rng.choice([s for s in pool if s not in shapes])
        shapes.append(shape)
        # Real scenes co-occur too (tables with chairs): this is what makes the bias plausible and
        # what POPE's adversarial negatives exploit.
        for partner in cfg.partners[shape]:
            if len(shapes) < n and partner not in shapes and rng.random() < cfg.pair_rate:
                shapes.append(partner)
    cells = rng.sample([(r, c) for r in range(cfg.grid) for c in range(cfg.grid)], len(shapes))
    cell_px = cfg.image_size // cfg.grid
    objects = []
    for shape, (row, col) in zip(shapes, cells):
        size = rng.randint(max(3, cell_px * 5 // 16), max(4, cell_px * 7 // 16))
        jitter = max(0, cell_px // 2 - size - 1)
        cx = col * cell_px + cell_px // 2 + rng.randint(-jitter, jitter)
        cy = row * cell_px + cell_px // 2 + rng.randint(-jitter, jitter)
        objects.append(ToyObject(shape, rng.choice(cfg.colors), row, col, cx, cy, size))
    objects.sort(key=lambda o: (o.row, o.col))  # reading order
    return objects


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def detailed_caption(objects: list[ToyObject]) -> str:
    """Accurate, exhaustive caption: the ground truth that judges see."""
    count = NUMBER_WORDS.get(len(objects), str(len(objects)))
    noun = "object" if len(objects) == 1 else "objects"
    phrases = [f"a {o.color} {o.shape} {o.position}" for o in objects]
    return f"There {'is' if len(objects) == 1 else 'are'} {count} {noun}: {_join(phrases)}."


def noisy_caption(cfg: ToyWorldConfig, objects: list[ToyObject], rng: random.Random) -> tuple[str, list[str]]:
    """Short SFT caption in reading order; absent partners are added right after their trigger."""
    present = {o.shape for o in objects}
    phrases, added = [], []
    for o in objects:
        phrases.append(f"a {o.color} {o.shape}")
        for partner in cfg.partners[o.shape]:
            if partner not in present and partner not in added and rng.random() < cfg.bias_rate:
                phrases.append(f"a {rng.choice(cfg.colors)} {partner}")
                added.append(partner)
    return _join(phrases) + ".", added


def pope_questions(cfg: ToyWorldConfig, objects: list[ToyObject], rng: random.Random,
                   popularity: list[str] | None = None) -> list[dict]:
    """One positive and one negative of each POPE kind (random / popular / adversarial) where possible."""
    present = sorted({o.shape for o in objects})
    absent = [s for s in cfg.shapes if s not in present]
    popularity = popularity or list(cfg.shapes)
    questions = []
    for kind in ("random", "popular", "adversarial"):
        if not absent:
            break
        if kind == "random":
            negative = rng.choice(absent)
        elif kind == "popular":
            negative = next(s for s in popularity if s in absent)
        else:  # adversarial: a co-occurrence partner of something present, else the most popular
            partners = [p for s in present for p in cfg.partners[s] if p in absent]
            negative = rng.choice(partners) if partners else next(s for s in popularity if s in absent)
        positive = rng.choice(present)
        questions.append({"kind": kind, "object": positive, "question": QUESTION_TEMPLATE.format(positive),
                          "answer": "Yes"})
        questions.append({"kind": kind, "object": negative, "question": QUESTION_TEMPLATE.format(negative),
                          "answer": "No"})
    return questions


@functools.lru_cache(maxsize=8)
def popularity(cfg: ToyWorldConfig, n_scenes: int = 2000) -> list[str]:
    """Shapes by how often they appear in scenes, most frequent first (POPE's "popular" negatives)."""
    counts = {s: 0 for s in cfg.shapes}
    for i in range(n_scenes):
        for o in _sample_objects(cfg, scene_rng(cfg.seed, "popularity", i)):
            counts[o.shape] += 1
    return sorted(cfg.shapes, key=lambda s: (-counts[s], s))


def make_scene(cfg: ToyWorldConfig, split: str, index: int) -> Scene:
    rng = scene_rng(cfg.seed, split, index)
    objects = _sample_objects(cfg, rng)
    caption, added = noisy_caption(cfg, objects, rng)
    scene = Scene(f"toy-{split}-{index:06d}", split, index, objects, caption, added)
    scene.questions = pope_questions(cfg, objects, rng, popularity(cfg))
    return scene


def make_scenes(cfg: ToyWorldConfig, split: str, n: int, start: int = 0,
                exclude: set[str] | None = None) -> list[Scene]:
    """Scenes start.. of a split; with `exclude`, scenes whose drawing has one of those signatures are
    skipped (and more are drawn), so a held-out set never repeats a training image exactly."""
    if not exclude:
        return [make_scene(cfg, split, i) for i in range(start, start + n)]
    scenes, index = [], start
    while len(scenes) < n:
        scene = make_scene(cfg, split, index)
        if signature(scene) not in exclude:
            scenes.append(scene)
        index += 1
    return scenes


def signatures(cfg: ToyWorldConfig, split: str, n: int, start: int = 0) -> set[str]:
    """Signatures of scenes start..start+n of a split: what a held-out set must exclude."""
    return {signature(s) for s in make_scenes(cfg, split, n, start)}


def signature(scene: Scene) -> str:
    """Identity of a drawing: two scenes with equal signatures render to the same pixels."""
    return ";".join(f"{o.shape},{o.color},{o.cx},{o.cy},{o.size}" for o in scene.objects)


def record_signature(record: dict) -> str:
    """`signature` of the scene behind a prompt record (from its `ground_truth`)."""
    return ";".join(f"{o['shape']},{o['color']},{o['cx']},{o['cy']},{o['size']}" for o in record["ground_truth"])


# --- drawing ---------------------------------------------------------------------------------------

def _polygon(shape: str, cx: float, cy: float, s: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(cx, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "diamond":
        return [(cx, cy - s), (cx + s, cy), (cx, cy + s), (cx - s, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = s if k % 2 == 0 else s * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        t = max(1.0, s / 3)
        return [(cx - t, cy - s), (cx + t, cy - s), (cx + t, cy - t), (cx + s, cy - t), (cx + s, cy + t),
                (cx + t, cy + t), (cx + t, cy + s), (cx - t, cy + s), (cx - t, cy + t), (cx - s, cy + t),
                (cx - s, cy - t), (cx - t, cy - t)]
    raise ValueError(f"no polygon for shape {shape!r}")


def draw_scene(cfg: ToyWorldConfig, scene: Scene) -> Image.Image:
    return draw_objects(cfg, scene.objects)


def draw_objects(cfg: ToyWorldConfig, objects: list[ToyObject]) -> Image.Image:
    """The objects on a blank canvas, in list order (later ones on top); the toy video draws frames so."""
    image = Image.new("RGB", (cfg.image_size, cfg.image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for o in objects:
        fill = COLORS[o.color]
        box = (o.cx - o.size, o.cy - o.size, o.cx + o.size, o.cy + o.size)
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon(_polygon(o.shape, o.cx, o.cy, o.size), fill=fill)
    return image


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# --- export ----------------------------------------------------------------------------------------

def scene_record(cfg: ToyWorldConfig, scene: Scene, image_path: str | None = None) -> dict:
    """A prompt record (id, images, question, caption, objects), plus the toy world's extras."""
    return {
        "id": scene.id,
        "images": [image_path] if image_path else [],
        "question": CAPTION_PROMPT,
        "caption": scene.detailed_caption,
        "objects": scene.categories,
        "source": "toy_world",
        "noisy_caption": scene.noisy_caption,
        "ground_truth": [asdict(o) for o in scene.objects],
        "pope": scene.questions,
    }


def write_prompts(cfg: ToyWorldConfig, split: str, n: int, out_dir: str | Path, start: int = 0,
                  exclude: set[str] | None = None, qa_fraction: float = 0.0) -> list[dict]:
    """Draw scenes as PNG files under out_dir/images and return prompt records that point at them; with
    `qa_fraction`, that fraction of them ask an existence question instead (`mix_existence_questions`)."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for scene in make_scenes(cfg, split, n, start, exclude):
        path = out_dir / "images" / f"{scene.id}.png"
        if not path.exists():
            draw_scene(cfg, scene).save(path)
        records.append(scene_record(cfg, scene, str(path.resolve())))
    return mix_existence_questions(cfg, records, qa_fraction, split, start)


def mix_existence_questions(cfg: ToyWorldConfig, records: list[dict], qa_fraction: float, split: str,
                            start: int = 0) -> list[dict]:
    """round(qa_fraction x len(records)) of the scene records ask one of their POPE questions instead of
    the caption prompt (RLAIF-V mixes question types; a policy trained on captions only lets its short-answer
    skill drift). The prompt budget stays the same: a scene is either captioned or questioned. Which scenes,
    and which of a scene's six questions (yes and no equally likely), is seeded by (seed, split, start), so
    each round's window draws its own mix. qa_fraction 0 returns the records unchanged.

    Never on the eval split: held-out scenes are what POPE evaluates, so training on their questions
    would score the model on its training data."""
    if not 0 <= qa_fraction <= 1:
        raise ValueError(f"qa_fraction must lie in [0, 1], got {qa_fraction}")
    n_qa = round(qa_fraction * len(records))
    if n_qa == 0:
        return records
    if split == "eval":
        raise ValueError("existence questions are mixed into training prompts only, never into the eval split")
    askable = [i for i, rec in enumerate(records) if rec.get("pope")]
    if n_qa > len(askable):
        raise ValueError(f"qa_fraction {qa_fraction}: {n_qa} questions wanted, {len(askable)} scenes have one")
    rng = scene_rng(cfg.seed, f"{split}-qa", start)
    chosen = set(rng.sample(askable, n_qa))
    out = []
    for i, rec in enumerate(records):
        if i not in chosen:
            out.append(rec)
            continue
        j = rng.randrange(len(rec["pope"]))
        q = rec["pope"][j]
        # Same scene, image and ground truth; only the question differs. The id stays unique per window.
        out.append({**rec, "id": f"{rec['id']}-qa{j}", "question": q["question"],
                    "qa": {"kind": q["kind"], "object": q["object"], "answer": q["answer"]}})
    return out


def to_hf_dataset(cfg: ToyWorldConfig, split: str, n: int, start: int = 0):
    """The scenes as a Hugging Face `datasets.Dataset` with an `images` column (lists of PIL images)."""
    import datasets

    scenes = make_scenes(cfg, split, n, start)
    rows = {key: [] for key in ("id", "images", "question", "caption", "objects", "noisy_caption")}
    for scene in scenes:
        rec = scene_record(cfg, scene)
        rows["id"].append(rec["id"])
        rows["images"].append([draw_scene(cfg, scene)])
        for key in ("question", "caption", "objects", "noisy_caption"):
            rows[key].append(rec[key])
    features = datasets.Features({
        "id": datasets.Value("string"),
        "images": datasets.Sequence(datasets.Image()),
        "question": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "objects": datasets.Sequence(datasets.Value("string")),
        "noisy_caption": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict(rows, features=features)
