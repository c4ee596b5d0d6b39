"""The judges' on-disk cache: one JSON file per request, written atomically, so killed runs lose nothing.

Used by `LLMClient` (llm_client.py): every finished call is stored at once under the hash of what decided
it (judge, model, template, inputs, sampling settings), and a rerun reads it back instead of calling.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

CACHE_VERSION = 1

class DiskCache:
    """One JSON file per request hash, sharded by its first two hex digits.

    Each file is written to a temp name and renamed, so a kill leaves a whole file or none; a file whose
    stored request differs from the one asked for (or that cannot be read) counts as a miss.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, material: dict) -> dict | None:
        try:
            entry = json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if entry.get("version") != CACHE_VERSION or entry.get("request") != material:
            return None
        return entry

    def put(self, key: str, material: dict, result) -> None:
        """Store `result` (a JudgeResult: parsed, usage, raw) for `key`."""
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        entry = {"version": CACHE_VERSION, "request": material, "parsed": result.parsed,
                 "usage": result.usage, "raw": result.raw, "created": time.time()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entry, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
