"""A prompt record as a model sees it: chat messages and the images (and video clip) they refer to.

Shared by every place that renders prompts for a model (the HF sampler, the vLLM backend, the claims
judge's image labeler), so that all of them show a model the same prompt.

A native video record (data_gen/sources.py `as: video`, data_gen/toy_video.py) holds its clip as `video`: the
paths of its frames, in order, and `video_fps`, the rate of those frames. Its messages have one
{"type": "video"} part, which the model's chat template renders as its video placeholder.
"""

from __future__ import annotations

from PIL import Image


def user_messages(record: dict) -> list[dict]:
    """Chat messages for a prompt record: its `messages`, or one user turn with its video, its images, then
    the question."""
    if record.get("messages"):
        return [m for m in record["messages"] if m.get("role") != "assistant"]
    if not record.get("question"):
        raise ValueError(f"record {record.get('id')!r}: needs 'question' or 'messages'")
    content = [{"type": "video"}] if record.get("video") else []
    content += [{"type": "image"} for _ in record.get("images", [])]
    content.append({"type": "text", "text": record["question"]})
    return [{"role": "user", "content": content}]


def load_images(record: dict) -> list[Image.Image]:
    return [_read(path, record, "image") for path in record.get("images", [])]


def load_video(record: dict) -> list[Image.Image] | None:
    """The record's clip as RGB frames, in order; None for a record without `video`."""
    paths = record.get("video")
    if not paths:
        return None
    if isinstance(paths, str) or not isinstance(paths, (list, tuple)):
        raise ValueError(f"record {record.get('id')!r}: 'video' must be a list of frame paths, got {paths!r}")
    return [_read(path, record, "video frame") for path in paths]


def _read(path, record: dict, what: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"record {record.get('id')!r}: cannot read {what} {path}: {err}") from None
