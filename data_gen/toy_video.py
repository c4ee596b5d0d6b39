"""The moving toy world: short clips of the toy world's shapes, with exact ground truth over time.

Each clip (8-16 frames by default, at `fps` frames per second) follows a few shapes, each a *track*: it
appears at its `enter` frame, travels along a straight line from one point of the canvas to another, and is
gone from its `leave` frame on (`leave == num_frames`: still there at the end). No two tracks enter on the
same frame, so "which appeared first" always has one answer. A shape moves from grid cell to grid cell: on
each frame it is drawn at the centre of the cell its path has reached, and no two shapes share a cell on a
frame. So, as in the image world, a cell holds one whole shape, and with LLaVA-NeXT-Video's 2 x 2 pooling one
video token sees one shape. Shapes gliding pixel by pixel straddle cells and tokens, and the tiny
checkpoint's vision tower tells them apart far less well (tests/benchmarks/video_perception_probe.py, held-out
frames named exactly after 2,000 steps: 61% gliding, 100% cell to cell); a checkpoint trained on gliding clips
mostly misread shapes, errors no preference pair can fix. Like the image toy world (toy_world.py), each clip
has
  (a) exact ground truth: every track's shape, colour, size, frames and path,
  (b) an accurate detailed caption naming the objects in order of appearance, where each starts and ends,
      and whether it leaves: what a judge sees,
  (c) a noisy SFT caption with co-occurrence bias (toy_world.noisy_caption on the tracks in order of
      appearance: an absent co-occurrence partner is mentioned anyway with `bias_rate`), so a tiny
      checkpoint fine-tuned on them hallucinates partners,
  (d) questions with their true answers: temporal order ("Does the star appear after the circle?") between
      two present shapes, the same about an absent co-occurrence partner (answer No: it never appears, the
      adversarial case), whether a shape is still there at the end, and existence (of a present shape, of
      an absent one, and of an absent co-occurrence partner: the adversarial one, as POPE's).
Shapes are drawn with toy_world.draw_objects. Everything is seeded per clip (hash
of seed, "video-" + split, index), a stream of its own: clip i of a split is the same whatever else is made.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from halign.data_gen.toy_world import (
    NUMBER_WORDS, POSITION_NAMES, ToyObject, ToyWorldConfig, draw_objects, noisy_caption, scene_rng,
)

VIDEO_PROMPT = "Describe the video."
AFTER_TEMPLATE = "Does the {} appear after the {}?"
STILL_THERE_TEMPLATE = "Is the {} still there at the end of the video?"
EXISTS_TEMPLATE = "Is there a {} in the video?"


@dataclass(frozen=True)
class ToyVideoConfig:
    world: ToyWorldConfig = ToyWorldConfig()  # shapes, colours, canvas, co-occurrence and bias rates
    min_frames: int = 8
    max_frames: int = 16
    min_objects: int = 2
    max_objects: int = 4
    min_visible: int = 3  # frames each track is on screen, so a sampled clip can still show it
    fps: float = 4.0

    def __post_init__(self):
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError("toy video: need 2 <= min_frames <= max_frames")
        if not 1 <= self.min_objects <= self.max_objects <= len(self.world.shapes):
            raise ValueError("toy video: need 1 <= min_objects <= max_objects <= number of shapes")
        if self.max_objects > self.world.grid ** 2:
            raise ValueError("toy video: max_objects must fit one shape a grid cell (at most grid x grid)")
        if not 1 <= self.min_visible <= self.min_frames - self.max_objects + 1:
            raise ValueError("toy video: min_visible frames must fit after the last track's entry "
                             "(min_visible <= min_frames - max_objects + 1)")


@dataclass
class Track:
    shape: str
    color: str
    size: int  # half-extent in pixels
    enter: int  # first frame on screen
    leave: int  # first frame no longer on screen (num_frames if it stays to the end)
    start: tuple[int, int]  # path point (x, y) on its first frame; the shape is drawn at the centre of its cell
    end: tuple[int, int]  # path point on its last frame

    def visible(self, frame: int) -> bool:
        return self.enter <= frame < self.leave

    def path_point(self, frame: int) -> tuple[int, int]:
        """Where the straight path is on `frame`; the shape is drawn at the centre of this point's cell."""
        span = self.leave - 1 - self.enter
        progress = (frame - self.enter) / span if span else 0.0
        return (round(self.start[0] + (self.end[0] - self.start[0]) * progress),
                round(self.start[1] + (self.end[1] - self.start[1]) * progress))


@dataclass
class Clip:
    id: str
    split: str
    index: int
    num_frames: int
    tracks: list[Track]  # in order of appearance (enter frame)
    noisy_caption: str
    hallucinated_in_noisy: list[str]
    questions: list[dict] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return sorted({t.shape for t in self.tracks})

    @property
    def appearance_order(self) -> list[str]:
        return [t.shape for t in self.tracks]


# ---------------------------------------------------------------------------------------------- sampling

def _sample_shapes(world: ToyWorldConfig, rng: random.Random, n: int) -> list[str]:
    """n distinct shapes; a drawn shape brings its co-occurrence partner with `pair_rate`, as in scenes."""
    shapes: list[str] = []
    while len(shapes) < n:
        shape = rng.choice([s for s in world.shapes if s not in shapes])
        shapes.append(shape)
        for partner in world.partners[shape]:
            if len(shapes) < n and partner not in shapes and rng.random() < world.pair_rate:
                shapes.append(partner)
    return shapes


def _sample_tracks(cfg: ToyVideoConfig, rng: random.Random, num_frames: int) -> list[Track]:
    shapes = _sample_shapes(cfg.world, rng, rng.randint(cfg.min_objects, cfg.max_objects))
    # Distinct entry frames, late enough entries still leave min_visible frames on screen.
    enters = sorted(rng.sample(range(num_frames - cfg.min_visible + 1), len(shapes)))
    if rng.random() < 0.5:
        enters[0] = 0  # often something is there from the start (entries stay distinct: they are sorted)
    cell = cfg.world.image_size // cfg.world.grid
    tracks = []
    occupied: set[tuple[int, tuple[int, int]]] = set()  # (frame, cell) pairs a placed shape holds
    for shape, enter in zip(shapes, enters):
        size = rng.randint(max(3, cell * 5 // 16), max(4, cell * 7 // 16))
        leave = num_frames if rng.random() < 0.5 else rng.randint(enter + cfg.min_visible, num_frames)
        low, high = size + 1, cfg.world.image_size - size - 2
        color = rng.choice(cfg.world.colors)
        # Paths are redrawn until no frame puts this shape in a cell another shape holds (a shape hidden under
        # another would make the caption say more than the frames show). A free path always exists within a
        # few tries: at most three other shapes, each in one cell a frame, on a 3 x 3 grid.
        for _ in range(_PATH_TRIES):
            start = (rng.randint(low, high), rng.randint(low, high))
            end = (rng.randint(low, high), rng.randint(low, high))
            track = Track(shape, color, size, enter, leave, start, end)
            cells = {(f, track_cell(cfg, track, f)) for f in range(enter, leave)}
            if not cells & occupied:
                break
        else:
            raise RuntimeError(f"toy video: no free path for a {shape} in {_PATH_TRIES} tries")
        occupied |= cells
        tracks.append(track)
    return tracks


_PATH_TRIES = 1000


def track_cell(cfg: ToyVideoConfig, track: Track, frame: int) -> tuple[int, int]:
    """(row, col) of the grid cell the track's path has reached on `frame`."""
    cell = cfg.world.image_size // cfg.world.grid
    cx, cy = track.path_point(frame)
    return min(cy // cell, cfg.world.grid - 1), min(cx // cell, cfg.world.grid - 1)


def make_clip(cfg: ToyVideoConfig, split: str, index: int) -> Clip:
    rng = scene_rng(cfg.world.seed, f"video-{split}", index)
    num_frames = rng.randint(cfg.min_frames, cfg.max_frames)
    tracks = _sample_tracks(cfg, rng, num_frames)
    caption, added = noisy_caption(cfg.world, [_as_object(cfg, t, t.enter) for t in tracks], rng)
    clip = Clip(f"toyvid-{split}-{index:06d}", split, index, num_frames, tracks, caption, added)
    clip.questions = clip_questions(cfg, clip, rng)
    return clip


def make_clips(cfg: ToyVideoConfig, split: str, n: int, start: int = 0) -> list[Clip]:
    return [make_clip(cfg, split, i) for i in range(start, start + n)]


# ---------------------------------------------------------------------------------------------- language

def _cell_phrase(cfg: ToyVideoConfig, point: tuple[int, int]) -> str:
    cell = cfg.world.image_size // cfg.world.grid
    return POSITION_NAMES[(min(point[1] // cell, cfg.world.grid - 1), min(point[0] // cell, cfg.world.grid - 1))]


def track_phrase(cfg: ToyVideoConfig, track: Track, num_frames: int) -> str:
    where_from, where_to = _cell_phrase(cfg, track.start), _cell_phrase(cfg, track.end)
    arrives = "is there from the start" if track.enter == 0 else "appears"
    # "at the top left" -> "the top left", to read "moves from the top left to the center".
    bare_from, bare_to = where_from.split(" ", 1)[1], where_to.split(" ", 1)[1]
    moves = f"stays {where_from}" if where_from == where_to else f"moves from {bare_from} to {bare_to}"
    leaves = " and then leaves" if track.leave < num_frames else ""
    return f"a {track.color} {track.shape} {arrives}, {moves}{leaves}"


def detailed_caption(cfg: ToyVideoConfig, clip: Clip) -> str:
    """Accurate caption: every track, in order of appearance, with where it goes and whether it leaves."""
    n = len(clip.tracks)
    count = NUMBER_WORDS.get(n, str(n))
    noun = "object appears" if n == 1 else "objects appear"
    phrases = [track_phrase(cfg, t, clip.num_frames) for t in clip.tracks]
    order = "" if n == 1 else ", in this order"
    return f"{count.capitalize()} {noun} in the video{order}: " + "; then ".join(phrases) + "."


def clip_questions(cfg: ToyVideoConfig, clip: Clip, rng: random.Random) -> list[dict]:
    """Questions with their true answers (each: kind, question, answer, objects)."""
    enter = {t.shape: t.enter for t in clip.tracks}
    present = clip.appearance_order
    absent = [s for s in cfg.world.shapes if s not in enter]
    questions = []

    def ask(kind, template, objects, answer):
        questions.append({"kind": kind, "question": template.format(*objects), "objects": list(objects),
                          "answer": "Yes" if answer else "No"})

    if len(present) >= 2:
        first, second = sorted(rng.sample(present, 2), key=enter.get)
        ask("order", AFTER_TEMPLATE, (second, first), True)  # the later one after the earlier one
        first, second = sorted(rng.sample(present, 2), key=enter.get)
        ask("order", AFTER_TEMPLATE, (first, second), False)
    # Adversarial: an absent co-occurrence partner of a present shape "after" that shape; it never appears.
    partners = [(p, s) for s in present for p in cfg.world.partners[s] if p in absent]
    if partners:
        ask("order_absent", AFTER_TEMPLATE, rng.choice(partners), False)
    track = rng.choice(clip.tracks)
    ask("still_there", STILL_THERE_TEMPLATE, (track.shape,), track.leave == clip.num_frames)
    ask("exists", EXISTS_TEMPLATE, (rng.choice(present),), True)
    if absent:
        ask("exists", EXISTS_TEMPLATE, (rng.choice(absent),), False)
    # Adversarial existence, as POPE's: an absent co-occurrence partner of a present shape (always No). Asked
    # last, so the clip's other questions stay what they were before this kind existed.
    if partners:
        ask("exists_partner", EXISTS_TEMPLATE, (rng.choice(partners)[0],), False)
    return questions


# ---------------------------------------------------------------------------------------------- drawing

def _as_object(cfg: ToyVideoConfig, track: Track, frame: int) -> ToyObject:
    """The track on `frame`, drawn at the centre of the cell its path has reached."""
    cell = cfg.world.image_size // cfg.world.grid
    row, col = track_cell(cfg, track, frame)
    return ToyObject(track.shape, track.color, row, col, col * cell + cell // 2, row * cell + cell // 2, track.size)


def draw_frames(cfg: ToyVideoConfig, clip: Clip) -> list[Image.Image]:
    return [draw_objects(cfg.world, [_as_object(cfg, t, f) for t in clip.tracks if t.visible(f)])
            for f in range(clip.num_frames)]


# ---------------------------------------------------------------------------------------------- export

def clip_record(cfg: ToyVideoConfig, clip: Clip, frame_paths: list[str], as_video: bool = True) -> dict:
    """A prompt record for the clip: native video (`video` + a {"type": "video"} message part, as the
    video source's `as: video`) or, with as_video False, the frames as images."""
    record = {
        "id": clip.id,
        "images": [] if as_video else list(frame_paths),
        "question": VIDEO_PROMPT,
        "caption": detailed_caption(cfg, clip),
        "objects": clip.categories,
        "appearance_order": clip.appearance_order,
        "source": "toy_video",
        "noisy_caption": clip.noisy_caption,
        "hallucinated_in_noisy": clip.hallucinated_in_noisy,
        "ground_truth": {"num_frames": clip.num_frames, "tracks": [asdict(t) for t in clip.tracks]},
        "questions": clip.questions,
        "video_fps": cfg.fps,
    }
    if as_video:
        record["video"] = list(frame_paths)
        record["messages"] = [{"role": "user", "content": [{"type": "video"},
                                                           {"type": "text", "text": VIDEO_PROMPT}]}]
    return record


def write_clips(cfg: ToyVideoConfig, split: str, n: int, out_dir: str | Path, start: int = 0,
                as_video: bool = True) -> list[dict]:
    """Draw clips as PNG frames under out_dir/frames/<clip id>/ and return their prompt records."""
    records = []
    for clip in make_clips(cfg, split, n, start):
        folder = Path(out_dir) / "frames" / clip.id
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, frame in enumerate(draw_frames(cfg, clip)):
            path = folder / f"{i:03d}.png"
            if not path.exists():
                frame.save(path)
            paths.append(str(path.resolve()))
        records.append(clip_record(cfg, clip, paths, as_video))
    return records
