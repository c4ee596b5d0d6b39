"""Image thumbnails for the HTML report: embedded as small data URIs, or linked relative to the page.

Embedding keeps the page one self-contained file (it can be mailed or opened offline), so the images must
not dominate its size: every distinct image is embedded once (items that share an image share the entry),
and each thumbnail gets a byte budget of `total_budget / distinct images`, capped at `MAX_THUMB_BYTES`.
A thumbnail is encoded as PNG when the image is flat-coloured (at most 256 colours, such as the toy world's
scenes) and that fits, else as JPEG at decreasing quality and size until it fits. 5,000 distinct photos get about 2 KB each (a ~64 px
JPEG), a few hundred get up to 24 KB (128 px).
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

MAX_SIDE = 128  # thumbnails are shown at most this large
MAX_THUMB_BYTES = 24_000
TOTAL_BUDGET_BYTES = 10_000_000  # all embedded thumbnails together (base64 text)
MODES = ("embed", "link", "none")


def resolve_image(path: str, search_dirs: list[Path]) -> Path | None:
    """An image path as written in a report: absolute, or relative to the report's folder or the cwd."""
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for folder in [*search_dirs, Path.cwd()]:
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def _encode(image, fmt: str, quality: int | None = None) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
    else:
        image.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def thumbnail_bytes(path: Path, max_bytes: int, max_side: int = MAX_SIDE) -> tuple[str, bytes]:
    """(mime type, encoded bytes) of a thumbnail no larger than max_bytes (in base64 characters)."""
    from PIL import Image

    with Image.open(path) as opened:
        image = opened.convert("RGBA" if opened.mode in ("RGBA", "LA", "P") else "RGB")
    # PNG only for flat-coloured images (drawings, diagrams): a photo never fits, and trying costs time.
    flat = image.getcolors(maxcolors=256) is not None
    side = max_side
    while True:
        thumb = image.copy()
        thumb.thumbnail((side, side))
        if flat:
            png = _encode(thumb, "PNG")
            if len(png) * 4 / 3 <= max_bytes:
                return "image/png", png
        for quality in (80, 65, 50, 35):
            jpeg = _encode(thumb, "JPEG", quality)
            if len(jpeg) * 4 / 3 <= max_bytes:
                return "image/jpeg", jpeg
        if side <= 24:  # nothing smaller is worth showing: keep the smallest JPEG
            return "image/jpeg", jpeg
        side = int(side * 0.75)


class ImageTable:
    """Distinct images of a report, each stored once; items refer to them by index.

    Paths are registered first (`add`) and encoded last (`sources`), so that the byte budget per thumbnail
    can follow from the number of distinct images of the whole page."""

    def __init__(self, mode: str, html_dir: Path, search_dirs: list[Path]):
        if mode not in MODES:
            raise ValueError(f"unknown image mode {mode!r}; choose one of {list(MODES)}")
        self.mode, self.html_dir, self.search_dirs = mode, html_dir, search_dirs
        self.index: dict[str, int] = {}
        self.missing: list[str] = []

    def add(self, path: str | None) -> int | None:
        """Index of the image's entry (None without an image or in mode `none`)."""
        if not path or self.mode == "none":
            return None
        return self.index.setdefault(str(path), len(self.index))

    def sources(self) -> list[str | None]:
        """Per index: a data URI (embed) or a path relative to the page (link); None for a missing file."""
        max_bytes = min(MAX_THUMB_BYTES, TOTAL_BUDGET_BYTES // max(1, len(self.index)))
        out = []
        for path in self.index:
            found = resolve_image(path, self.search_dirs)
            if found is None:
                self.missing.append(path)
                out.append(None)
            elif self.mode == "link":
                out.append(Path(os.path.relpath(found.resolve(), self.html_dir.resolve())).as_posix())
            else:
                mime, data = thumbnail_bytes(found, max_bytes)
                out.append(f"data:{mime};base64," + base64.b64encode(data).decode("ascii"))
        return out


def png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")
