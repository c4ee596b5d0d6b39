"""Prompt sources: turn a dataset on disk into prompt records (`id`, `images`, `question` or `messages`,
`caption`, optional `objects`, `source`), the input of the sampling stage.

One entry point, `load_source(spec) -> (records, skipped)`, with `spec["type"]` one of

  toy     the toy world: {"type": "toy", "out": DIR, "n": 100, "split": "dpo", "seed": 0, "start": 0}
  toy_video  the moving toy world (data_gen/toy_video.py), clips drawn as frame files under DIR:
          {"type": "toy_video", "out": DIR, "n": 100, "split": "dpo", "seed": 0, "start": 0, "as": "images"}
  jsonl   a JSONL file or a JSON list of records: {"type": "jsonl", "path": FILE, "image_root": DIR}
  json    same as jsonl (the reader tells the two apart by the first character)
  hf      a Hugging Face dataset saved with `save_to_disk`: {"type": "hf", "path": DIR, "split": "train",
          "image_dir": DIR}; embedded images (Image features) are written to image_dir as files, because
          prompt records hold paths
  coco    COCO images + a captions file: {"type": "coco", "images": DIR, "captions": captions_*.json,
          "instances": instances_*.json (optional: objects), "limit": N}
  video   records whose `frames` / `video` is a clip: a list of frame paths, a folder of frames (name order)
          or a video file (.mp4, .avi, .mkv, .webm, .mov, ...; decoded with PyAV, an optional dependency:
          `pip install av`): {"type": "video", "path": FILE, "max_frames": 8, "fps": 2, "frame_dir": DIR,
          "as": "images"}
            fps         keep this many frames per second of video (needs the clip's rate: a file's own, or
                        `video_fps` in the record or spec for frames); never adds frames
            max_frames  then keep at most this many, evenly spaced, first frame included
            frame_dir   where a decoded file's kept frames are written, as <frame_dir>/<id>/<index>.png
                        (prompt records hold paths); required for video files
            as          "images" (default): the frames become a multi-image prompt, one image part each;
                        "video": a native video record for models that read video (Qwen2-VL / 2.5-VL,
                        LLaVA-NeXT-Video): `video` holds the frame paths, `images` is empty, `messages`
                        is one user turn [{"type": "video"}, {"type": "text", ...}] as transformers' chat
                        templates expect, `question` is kept, and `video_fps` is the rate of the kept
                        frames where known (Qwen2.5-VL's seconds per temporal patch come from it)
          See data_gen/video_frames.py for the sampling rule.

Key aliases accepted in jsonl / json / hf / video records (the ShareGPT4V / LLaVA-Hound shapes), first match
wins; anything else in a record is kept as is:

  id        id, image_id, question_id, video_id           (else "<source>-<row index>")
  images    images, image, frames, video                 (a path or a list; `video` may be a folder of frames)
  question  question, prompt, instruction; or messages (kept as they are; `question` is then the text of
            their last user turn, which the pairs stage and the judges read); or conversations (ShareGPT
            "from"/"value" turns: the first human turn is the question, "<image>" markers removed, the first
            gpt turn is the caption when no caption key is present)
  caption   caption, detailed_caption, description
  objects   objects

Records whose images are missing or unreadable, or that lack a question or a caption, are not fatal: each
is reported in `skipped` as {"id", "reason"} and left out, so one bad file never stops a run of thousands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image

from halign.data_gen.io import read_records
from halign.data_gen.video_frames import decode_video, is_video_file, sample_indices, sampled_fps

DEFAULT_QUESTION = "Describe the image in detail."
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}
ID_KEYS = ("id", "image_id", "question_id", "video_id")
IMAGE_KEYS = ("images", "image", "frames", "video")
QUESTION_KEYS = ("question", "prompt", "instruction")
CAPTION_KEYS = ("caption", "detailed_caption", "description")
SOURCE_TYPES = ("toy", "toy_video", "jsonl", "json", "hf", "coco", "video")
VIDEO_MODES = ("images", "video")
# The keys each source type reads (a misspelt key would otherwise be ignored without a word).
_RECORD_KEYS = ("type", "path", "image_root", "source", "question", "require_caption", "check", "as", "fps",
                "max_frames", "video_fps", "frame_dir")
SPEC_KEYS = {
    "toy": ("type", "out", "n", "split", "seed", "start"),
    "toy_video": ("type", "out", "n", "split", "seed", "start", "as"),
    "jsonl": _RECORD_KEYS, "json": _RECORD_KEYS, "video": _RECORD_KEYS,
    "hf": _RECORD_KEYS + ("split", "image_dir"),
    "coco": ("type", "images", "captions", "instances", "limit", "question", "source", "check"),
}


class SkipRecord(ValueError):
    """This record cannot be used; the message is the reason reported for it."""


def load_source(spec: dict) -> tuple[list[dict], list[dict]]:
    """Prompt records from a source spec, and the records skipped (each {"id", "reason"})."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a source spec is a dict with a 'type' ({', '.join(SOURCE_TYPES)}), got {spec!r}")
    kind = spec["type"]
    if kind not in SPEC_KEYS:
        raise ValueError(f"unknown source type {kind!r}; known: {', '.join(SOURCE_TYPES)}")
    unknown = sorted(set(spec) - set(SPEC_KEYS[kind]))
    if unknown:
        raise ValueError(f"{kind} source: unknown key(s) {unknown}; it takes {sorted(SPEC_KEYS[kind])}")
    if kind == "toy":
        return _toy(spec), []
    if kind == "toy_video":
        return _toy_video(spec), []
    if spec.get("as", "images") not in VIDEO_MODES or (spec.get("as") == "video" and "video" not in kind):
        raise ValueError(f"'as' is one of {VIDEO_MODES}, and 'video' only for video sources; got {spec.get('as')!r}")
    if kind in ("jsonl", "json", "video"):
        path = Path(_required(spec, "path"))
        rows = read_records(path)
        return normalize_records(rows, spec, default_root=path.parent, default_source=path.stem)
    if kind == "hf":
        return _hf(spec)
    if kind == "coco":
        return _coco(spec)
    raise ValueError(f"unknown source type {kind!r}; known: {', '.join(SOURCE_TYPES)}")


def _required(spec: dict, key: str) -> Any:
    if spec.get(key) in (None, ""):
        raise ValueError(f"source {spec.get('type')!r} needs {key!r} in its spec")
    return spec[key]


# ---------------------------------------------------------------------------------------------- toy world

def _toy(spec: dict) -> list[dict]:
    from halign.data_gen import toy_world

    world = toy_world.ToyWorldConfig(seed=int(spec.get("seed", 0)))
    return toy_world.write_prompts(world, spec.get("split", "dpo"), int(spec.get("n", 100)),
                                   _required(spec, "out"), start=int(spec.get("start", 0)))


def _toy_video(spec: dict) -> list[dict]:
    from halign.data_gen import toy_video, toy_world

    if spec.get("as", "images") not in VIDEO_MODES:
        raise ValueError(f"toy_video source: 'as' is one of {VIDEO_MODES}, got {spec.get('as')!r}")
    cfg = toy_video.ToyVideoConfig(world=toy_world.ToyWorldConfig(seed=int(spec.get("seed", 0))))
    return toy_video.write_clips(cfg, spec.get("split", "dpo"), int(spec.get("n", 100)), _required(spec, "out"),
                                 start=int(spec.get("start", 0)), as_video=spec.get("as") == "video")


# ---------------------------------------------------------------------------------------------- generic records

def normalize_records(rows, spec: dict, default_root: Path | None = None,
                      default_source: str = "records") -> tuple[list[dict], list[dict]]:
    """Map aliased rows to prompt records, checking images; bad rows go to `skipped` with a reason."""
    root = Path(spec["image_root"]) if spec.get("image_root") else default_root
    source = spec.get("source", default_source)
    records, skipped = [], []
    for index, row in enumerate(rows):
        rid = _first(row, ID_KEYS) if isinstance(row, dict) else None
        rid = str(rid) if rid is not None else f"{source}-{index:06d}"
        try:
            records.append(normalize_record(row, rid, spec, root, source))
        except SkipRecord as err:
            skipped.append({"id": rid, "reason": str(err)})
    return records, skipped


def normalize_record(row: dict, rid: str, spec: dict, root: Path | None, source: str) -> dict:
    if not isinstance(row, dict):
        raise SkipRecord(f"expected an object, got {type(row).__name__}")
    images, video_fps = _image_list(row, rid, root, spec)
    question = _first(row, QUESTION_KEYS)
    messages = row.get("messages")
    caption = _first(row, CAPTION_KEYS)
    if not question and not messages and row.get("conversations"):
        question, answer = _sharegpt(row["conversations"])
        caption = caption or answer
    if not question and not messages:
        question = spec.get("question", DEFAULT_QUESTION)
    if spec.get("require_caption", True) and not str(caption or "").strip():
        raise SkipRecord("no caption (keys: " + ", ".join(CAPTION_KEYS) + ", or a gpt turn in conversations)")
    check_images(images, spec.get("check", "header"))
    alias_keys = set(ID_KEYS + IMAGE_KEYS + QUESTION_KEYS + CAPTION_KEYS) | {"conversations"}
    record = {k: v for k, v in row.items() if k not in alias_keys}
    record.update({"id": rid, "images": images, "caption": caption, "source": row.get("source", source)})
    if messages and not question:
        # The pairs stage and the judges read `question`: a record given as chat messages keeps their text.
        question = _messages_question(messages, rid)
    if spec.get("as") == "video":
        return _native_video(record, messages, question, video_fps)
    if messages:
        record["messages"] = messages
    record["question"] = str(question)
    return record


def _messages_question(messages, rid: str) -> str:
    """The text of the last user turn of chat messages (string content, or its text parts)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise SkipRecord("'messages' must be a list of {\"role\", \"content\"} turns")
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            text = content
        else:
            text = " ".join(str(p.get("text", "")) for p in content or []
                            if isinstance(p, dict) and p.get("type") == "text")
        if text.strip():
            return text.strip()
    raise SkipRecord(f"record {rid!r}: its messages have no user turn with text (the question)")


def _native_video(record: dict, messages: list | None, question: Any, video_fps: float | None) -> dict:
    """The frames as one video part instead of one image part each (spec "as": "video")."""
    record["video"], record["images"] = record["images"], []
    if messages:
        parts = [p for m in messages if isinstance(m.get("content"), list) for p in m["content"]]
        if not any(isinstance(p, dict) and p.get("type") == "video" for p in parts):
            raise SkipRecord('native video record: its messages have no {"type": "video"} part')
        record["messages"] = messages
    else:
        record["messages"] = [{"role": "user", "content": [{"type": "video"},
                                                           {"type": "text", "text": str(question)}]}]
    record["question"] = str(question)  # the messages' text when they were given: pairs and judges read it
    if video_fps:
        record["video_fps"] = video_fps
    return record


def _first(row: dict, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if row.get(key) not in (None, "", []):
            return row[key]
    return None


def _sharegpt(turns: list) -> tuple[str | None, str | None]:
    """(first human turn without <image> markers, first gpt turn) of a ShareGPT conversation."""
    question = answer = None
    for turn in turns if isinstance(turns, list) else []:
        speaker, value = turn.get("from"), str(turn.get("value") or "")
        if speaker in ("human", "user") and question is None:
            question = value.replace("<image>", "").replace("<video>", "").strip()
        elif speaker in ("gpt", "assistant") and answer is None and question is not None:
            answer = value.strip()
    return question, answer


def _image_list(row: dict, rid: str, root: Path | None, spec: dict) -> tuple[list[str], float | None]:
    """The record's image paths (a clip's sampled frames) and, for a clip of known rate, the kept frames'
    rate."""
    value = _first(row, IMAGE_KEYS)
    if value is None:
        raise SkipRecord("no image (keys: " + ", ".join(IMAGE_KEYS) + ")")
    paths = []
    for item in value if isinstance(value, list) else [value]:
        path = Path(str(item)).expanduser()
        if not path.is_absolute() and root is not None:
            path = root / path
        if spec.get("type") == "video" and is_video_file(path):
            return _decoded_clip(path, rid, spec)
        if path.is_dir():  # a video as a folder of frames, in name order
            paths.extend(sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            paths.append(str(path))
    if not paths:
        raise SkipRecord(f"no frames found in {value!r}")
    clip_fps = row.get("video_fps") or spec.get("video_fps")
    if spec.get("fps") and not clip_fps:
        raise SkipRecord("fps sampling of frame files needs the clip's rate: 'video_fps' in the record or spec")
    # Evenly spaced frames cover the whole clip, as video MLLMs sample them.
    keep = sample_indices(len(paths), clip_fps, spec.get("fps"), spec.get("max_frames"))
    return [paths[i] for i in keep], sampled_fps(len(paths), len(keep), clip_fps)


def _decoded_clip(path: Path, rid: str, spec: dict) -> tuple[list[str], float | None]:
    if not path.is_file():
        raise SkipRecord(f"video not found: {path}")
    if not spec.get("frame_dir"):
        raise ValueError("video source: video files are decoded to frame files; give 'frame_dir' in the spec")
    out_dir = Path(spec["frame_dir"]) / rid.replace("/", "_")
    try:
        return decode_video(path, out_dir, spec.get("fps"), spec.get("max_frames"))
    except ValueError as err:  # unreadable or empty file: this record only
        raise SkipRecord(str(err)) from None


def check_images(paths: list[str], mode: str = "header") -> None:
    """'header' opens each file and checks its structure (cheap); 'decode' decodes the pixels; 'none'."""
    if mode == "none":
        return
    if mode not in ("header", "decode"):
        raise ValueError(f"check must be 'header', 'decode' or 'none', got {mode!r}")
    for path in paths:
        if not Path(path).is_file():
            raise SkipRecord(f"image not found: {path}")
        try:
            with Image.open(path) as im:
                im.verify() if mode == "header" else im.load()
        except Exception as err:  # Pillow raises many types for broken files; any of them means skip
            raise SkipRecord(f"unreadable image {path}: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------------------------- HF datasets

def _hf(spec: dict) -> tuple[list[dict], list[dict]]:
    import datasets

    path = Path(_required(spec, "path"))
    data = datasets.load_from_disk(str(path))
    if isinstance(data, datasets.DatasetDict):
        split = spec.get("split") or next(iter(data))
        if split not in data:
            raise ValueError(f"hf source: {path} has splits {list(data)}, not {split!r}")
        data = data[split]
    # Embedded images stay undecoded (bytes + path), so a corrupt one is skipped per record instead of
    # raising inside the dataset iterator.
    for name, feature in data.features.items():
        if isinstance(feature, datasets.Image):
            data = data.cast_column(name, datasets.Image(decode=False))
        elif isinstance(getattr(feature, "feature", None), datasets.Image):
            data = data.cast_column(name, type(feature)(datasets.Image(decode=False)))
    image_dir = Path(spec["image_dir"]) if spec.get("image_dir") else None
    rows, pre_skipped = [], []
    for index, row in enumerate(data):
        try:
            rows.append(_materialize_images(row, index, image_dir))
        except SkipRecord as err:
            rid = _first(row, ID_KEYS)
            pre_skipped.append({"id": str(rid) if rid is not None else f"{path.name}-{index:06d}",
                                "reason": str(err)})
    records, skipped = normalize_records(rows, spec, default_root=path, default_source=path.name)
    return records, pre_skipped + skipped


def _materialize_images(row: dict, index: int, image_dir: Path | None) -> dict:
    """Embedded images (PIL or {"bytes", "path"}) become files under image_dir; paths pass through."""
    key = next((k for k in IMAGE_KEYS if row.get(k) not in (None, [])), None)
    if key is None:
        return row
    values = row[key] if isinstance(row[key], list) else [row[key]]
    if all(isinstance(v, str) for v in values):
        return row
    if image_dir is None:
        raise ValueError("hf source: the dataset embeds images; give 'image_dir' in the spec to write them to")
    image_dir.mkdir(parents=True, exist_ok=True)
    rid = str(_first(row, ID_KEYS) or f"row-{index:06d}").replace("/", "_")
    paths = []
    for j, value in enumerate(values):
        if isinstance(value, Image.Image):
            target = image_dir / f"{rid}-{j}.png"
            value.save(target)
        elif isinstance(value, dict) and value.get("bytes"):
            suffix = Path(value.get("path") or "").suffix or ".png"
            target = image_dir / f"{rid}-{j}{suffix}"
            target.write_bytes(value["bytes"])
        elif isinstance(value, dict) and value.get("path"):
            target = Path(value["path"])
        else:
            raise SkipRecord(f"image {j} is neither a path nor embedded bytes")
        paths.append(str(target))
    return {**row, key: paths}


# ---------------------------------------------------------------------------------------------- COCO

def _coco(spec: dict) -> tuple[list[dict], list[dict]]:
    image_dir = Path(_required(spec, "images"))
    captions = json.loads(Path(_required(spec, "captions")).read_text(encoding="utf-8"))
    by_image: dict[int, list[str]] = {}
    for ann in captions.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(str(ann["caption"]).strip())
    objects: dict[int, set[str]] | None = None
    if spec.get("instances"):
        instances = json.loads(Path(spec["instances"]).read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in instances.get("categories", [])}
        objects = {}
        for ann in instances.get("annotations", []):
            objects.setdefault(ann["image_id"], set()).add(names.get(ann["category_id"], str(ann["category_id"])))
    question = spec.get("question", DEFAULT_QUESTION)
    records, skipped = [], []
    images = sorted(captions.get("images", []), key=lambda im: im["id"])
    if spec.get("limit"):
        images = images[: int(spec["limit"])]
    for image in images:
        rid = f"coco-{image['id']}"
        try:
            refs = by_image.get(image["id"])
            if not refs:
                raise SkipRecord("no reference captions for this image")
            path = str(image_dir / image["file_name"])
            check_images([path], spec.get("check", "header"))
        except SkipRecord as err:
            skipped.append({"id": rid, "reason": str(err)})
            continue
        # The joined references are the judge's ground truth: five short views of one image.
        caption = " ".join(c if c.endswith(".") else c + "." for c in refs)
        record = {"id": rid, "image_id": image["id"], "images": [path], "question": question,
                  "caption": caption, "source": spec.get("source", "coco")}
        if objects is not None:
            record["objects"] = sorted(objects.get(image["id"], set()))
        records.append(record)
    return records, skipped
