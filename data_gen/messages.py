"""A prompt record as a model sees it: chat messages and the images they refer to.

Shared by every place that renders prompts for a model (the HF sampler, the vLLM backend, the claims
judge's image labeler), so that all of them show a model the same prompt.
"""

from __future__ import annotations

from PIL import Image


def user_messages(record: dict) -> list[dict]:
    """Chat messages for a prompt record: its `messages`, or one user turn with images then the question."""
    if record.get("messages"):
        return [m for m in record["messages"] if m.get("role") != "assistant"]
    if not record.get("question"):
        raise ValueError(f"record {record.get('id')!r}: needs 'question' or 'messages'")
    content = [{"type": "image"} for _ in record.get("images", [])]
    content.append({"type": "text", "text": record["question"]})
    return [{"role": "user", "content": content}]


def load_images(record: dict) -> list[Image.Image]:
    images = []
    for path in record.get("images", []):
        try:
            with Image.open(path) as im:
                images.append(im.convert("RGB"))
        except (OSError, ValueError) as err:
            raise ValueError(f"record {record.get('id')!r}: cannot read image {path}: {err}") from None
    return images
