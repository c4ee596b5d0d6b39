"""Check preference pairs before training: skip bad ones with a reason, or fail fast in strict mode.

A bad pair found by trl mid-run costs the whole run (an unreadable image raises in the collator, hours in),
and some are worse silent: identical chosen/rejected sides give a zero-gradient pair that still counts in
the averages, and a prompt whose text + image tokens already fill `max_length` is truncated by trl's
collator through its image tokens, leaving no completion token to score (or image features that no longer
match the image placeholders). So every pair is checked once up front:

  missing_image     an image path that does not exist (and no embedded bytes); a video frame likewise
  unreadable_image  bytes or a file that Pillow cannot decode (image or video frame)
  empty_video       a video with no frames
  empty_chosen / empty_rejected   a side with no text
  identical         chosen and rejected say the same thing
  prompt_too_long   prompt tokens, image tokens included, >= max_length: no completion token survives
  unprocessable     the processor itself rejects the pair (e.g. image placeholders vs images)

Skipped pairs go to `skipped_pairs.jsonl` (index, prompt_id, reason, detail) in the output folder; the
returned summary is what the training manifest records.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

from halign.data_gen.io import write_jsonl

SKIPPED_FILE = "skipped_pairs.jsonl"


class BadPairError(ValueError):
    """A bad pair in strict mode; the message names the record and the reason."""


def _text(messages) -> str:
    """All text of a side: string contents, or the text parts of structured contents."""
    if isinstance(messages, str):
        return messages
    parts = []
    for message in messages or []:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text") or "" for p in content if isinstance(p, dict))
    return " ".join(parts)


def _open_image(entry):
    """(PIL image, None) or (None, (reason, detail)) for one undecoded `datasets.Image` value or a path."""
    from PIL import Image

    if isinstance(entry, (str, Path)):
        entry = {"path": str(entry), "bytes": None}
    if entry is None or (not entry.get("bytes") and not entry.get("path")):
        return None, ("missing_image", "empty image entry")
    path = entry.get("path")
    if not entry.get("bytes") and not Path(path).is_file():
        return None, ("missing_image", str(path))
    try:
        source = io.BytesIO(entry["bytes"]) if entry.get("bytes") else path
        with Image.open(source) as image:
            image.load()  # verify() alone misses truncated pixel data
            return image.convert("RGB"), None
    except Exception as err:  # noqa: BLE001 - any decoder error makes the image unusable
        return None, ("unreadable_image", f"{path}: {type(err).__name__}: {err}")


def prompt_length(processor, row: dict, images: list, videos: list | None = None) -> int:
    """Tokens of the rendered prompt with its images (and videos) expanded, exactly as the collators build it."""
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    from halign.align.packing_video import video_messages, video_prompt_inputs

    example = {"prompt": video_messages(row["prompt"], images, videos),
               "chosen": prepare_multimodal_messages(row["chosen"]),
               "rejected": prepare_multimodal_messages(row["rejected"])}
    text = apply_chat_template(example, processor)["prompt"]
    if videos:
        encoded = video_prompt_inputs(processor, [text], [{"images": images, "videos": videos,
                                                            "video_fps": row.get("video_fps")}])
    else:
        encoded = processor(images=[images] if images else None, text=[text], add_special_tokens=False)
    return len(encoded["input_ids"][0])


def check_pair(row: dict, processor=None, max_length: int | None = None) -> tuple[str, str] | None:
    """None for a good pair, else (reason, detail). `row["images"]` holds undecoded image entries or paths."""
    images = []
    for entry in row.get("images") or []:
        image, problem = _open_image(entry)
        if problem:
            return problem
        images.append(image)
    videos = []
    for clip in row.get("videos") or []:
        if not clip:
            return "empty_video", "a video with no frames"
        frames = []
        for entry in clip:
            frame, problem = _open_image(entry)
            if problem:
                return problem
            frames.append(frame)
        videos.append(frames)
    chosen, rejected = _text(row.get("chosen")).strip(), _text(row.get("rejected")).strip()
    if not chosen:
        return "empty_chosen", ""
    if not rejected:
        return "empty_rejected", ""
    if " ".join(chosen.split()) == " ".join(rejected.split()):
        return "identical", chosen[:80]
    if max_length is not None and processor is not None:
        try:
            n = prompt_length(processor, row, images, videos)
        except Exception as err:  # noqa: BLE001 - the collator would raise the same mid-run
            return "unprocessable", f"{type(err).__name__}: {err}"
        if n >= max_length:
            return "prompt_too_long", f"{n} prompt tokens (images included) >= max_length {max_length}"
    return None


def _undecoded(dataset):
    """The dataset with image columns left as {bytes, path}: checking must not die on the first bad file."""
    import datasets

    feature = dataset.features.get("images")
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image) and inner.decode:
        dataset = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    if "videos" in dataset.column_names:  # clips of frames (data_gen/pairs.py)
        dataset = dataset.cast_column("videos", datasets.List(datasets.List(datasets.Image(decode=False))))
    return dataset


def validate_pairs(dataset, processor=None, max_length: int | None = None, strict: bool = False,
                   out_dir: str | Path | None = None):
    """(good pairs, summary). Writes `skipped_pairs.jsonl` to `out_dir`; strict=True raises on the first bad pair.

    `processor` and `max_length` enable the length check (DPOConfig.max_length; None disables it).
    Call it before `select_columns`, so that skipped records can be named by their `prompt_id`.
    """
    raw = _undecoded(dataset)
    good, skipped = [], []
    for index in range(len(raw)):
        row = raw[index]
        problem = check_pair(row, processor, max_length)
        if problem is None:
            good.append(index)
            continue
        reason, detail = problem
        record = {"index": index, "prompt_id": row.get("prompt_id"), "reason": reason, "detail": detail}
        if strict:
            name = f"pair {index}" + (f" (prompt_id {record['prompt_id']})" if record["prompt_id"] else "")
            raise BadPairError(f"{name}: {reason}" + (f": {detail}" if detail else "")
                               + " (strict mode; without it the pair is skipped and logged)")
        skipped.append(record)
    if out_dir is not None:
        write_jsonl(Path(out_dir) / SKIPPED_FILE, skipped)
    summary = {"checked": len(raw), "kept": len(good), "skipped": len(skipped),
               "skipped_reasons": dict(Counter(r["reason"] for r in skipped))}
    if not good:
        raise ValueError(f"no usable preference pairs: all {len(raw)} were skipped ({summary['skipped_reasons']})")
    kept = dataset if len(good) == len(dataset) else dataset.select(good)
    return kept, summary
