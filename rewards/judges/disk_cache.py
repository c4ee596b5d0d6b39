"""The judges' on-disk cache: one JSON file per request, written atomically, shared between runs.

Used by `LLMClient` (llm_client.py): every finished call is stored at once under the hash of what decided it
(endpoint, model, judge, template, inputs, sampling settings, messages), and any later run (another output
folder, another pipeline) reads it back instead of paying again. The default folder is
`$HALIGN_CACHE/judge` (else `$XDG_CACHE_HOME/halign/judge`, else `~/.cache/halign/judge`).

Trust: an entry is used only when its stored request equals the one asked for and its raw reply passes the
judge's validator again, giving the same verdict; anything else is reported and asked again.

Sharing: before paying for a request a run takes a claim on its key (a `.claim` file created exclusively,
holding host and pid). A second run that finds a live claim waits for the first run's answer instead of
asking too; a claim whose process is gone (killed run) is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

CACHE_VERSION = 2
CLAIM_MAX_AGE = 3600.0  # seconds: a claim from another host older than this is taken over

_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give: files follow the umask (mkstemp alone gives 0600)


def default_cache_dir() -> Path:
    if os.environ.get("HALIGN_CACHE"):
        root = Path(os.environ["HALIGN_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "halign"
    return root / "judge"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to someone else
    return True


class DiskCache:
    """One JSON file per request hash, sharded by its first two hex digits."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self, min_age: float = 3600.0) -> None:
        """A run killed mid-write leaves a temp file; one older than an hour belongs to no live writer."""
        now = time.time()
        for tmp in self.root.glob("??/.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > min_age:
                    tmp.unlink()
            except OSError:
                pass

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, material: dict, validator=None) -> tuple[dict | None, str | None]:
        """(entry, None) on a good hit, (None, None) on a miss, (None, reason) for an entry that cannot be
        trusted (it is then asked again and overwritten)."""
        path = self.path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except OSError as err:
            return None, f"{path}: unreadable ({err.strerror})"
        try:
            entry = json.loads(text)
        except ValueError:
            return None, f"{path}: not valid JSON"
        if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
            return None, None  # written by another version of the cache: a miss, not tampering
        if entry.get("request") != material:
            return None, f"{path}: stored request differs from the one asked"
        if validator is not None:
            try:
                parsed = validator(entry.get("raw") if isinstance(entry.get("raw"), str) else "")
            except ValueError as err:
                return None, f"{path}: stored reply no longer validates ({str(err)[:120]})"
            if parsed != entry.get("parsed"):
                return None, f"{path}: stored verdict does not match its stored reply"
        usage = entry.get("usage")
        if not (isinstance(usage, dict) and all(isinstance(usage.get(k), int) and usage[k] >= 0
                                                for k in ("prompt_tokens", "completion_tokens"))):
            return None, f"{path}: bad usage record"
        return entry, None

    def put(self, key: str, material: dict, result) -> None:
        """Store `result` (a JudgeResult: parsed, usage, raw) for `key`."""
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        entry = {"version": CACHE_VERSION, "request": material, "parsed": result.parsed,
                 "usage": result.usage, "raw": result.raw, "created": time.time()}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            os.fchmod(fd, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(entry, fh, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # -- claims: two runs never pay twice for one request

    def _claim_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.claim"

    def claim(self, key: str) -> bool:
        """True when this process now holds the claim on `key` (and must ask); False when a live run does."""
        path = self._claim_path(key)
        path.parent.mkdir(exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            except FileExistsError:
                if self._claim_is_live(path):
                    return False
                path.unlink(missing_ok=True)  # a killed run's claim: take it over
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(self.owner)
            return True
        return False

    def claim_is_live(self, key: str) -> bool:
        return self._claim_is_live(self._claim_path(key))

    def _claim_is_live(self, path: Path) -> bool:
        try:
            owner = path.read_text()
            age = time.time() - path.stat().st_mtime
        except OSError:
            return False
        host, _, pid = owner.partition(":")
        if owner == self.owner:
            return True
        if host == socket.gethostname() and pid.isdigit():
            return _pid_alive(int(pid))
        if not pid:  # being written this instant by its creator
            return age < 5
        return age < CLAIM_MAX_AGE

    def release(self, key: str) -> None:
        path = self._claim_path(key)
        try:
            if path.read_text() == self.owner:
                path.unlink()
        except OSError:
            pass
