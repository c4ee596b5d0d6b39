"""File helpers shared by every stage: JSONL records, atomic writes, manifests.

Every stage output directory gets a `manifest.json` (config, package versions, git revision, input hashes,
wall time). Secrets never reach it: config values whose key looks like a credential are refused.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

# Key names that hold credentials (not e.g. `max_new_tokens` or `prompt_tokens`).
SECRET_KEY_RE = re.compile(r"(api_?key|secret|password|passwd|access_token|auth_token|hf_token|^token$|bearer)")
TRACKED_PACKAGES = ("halign", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "openai")


class RecordError(ValueError):
    """Bad input record: the message names the file, the line and the key."""


def read_records(path: str | Path) -> list[dict]:
    """Read a JSONL file or a JSON list of objects; errors name the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise RecordError(f"{path}:{line}: not UTF-8 (byte {raw[err.start]:#04x} at offset {err.start})") from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise RecordError(f"{path}: item {i} is a {type(rec).__name__}, expected an object")
        return records
    return list(_parse_jsonl(path, text.splitlines()))


def iter_jsonl(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        yield from _parse_jsonl(path, fh)


def _parse_jsonl(path: Path, lines) -> Iterator[dict]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise RecordError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield rec


def write_jsonl(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records atomically: a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path) as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class atomic_writer:
    """Context manager: write to a temp file in the same folder, then rename over the target.

    The temp file's name carries the writer's pid (`.NAME.PID.XXXX.tmp`): a writer killed mid-write (SIGKILL,
    out of memory) cannot clean up, so the next writer of the same target removes temp files whose process
    is gone, and a killed run leaves no litter behind once it is resumed."""

    def __init__(self, path: Path):
        self.path = path

    def _remove_orphans(self) -> None:
        for tmp in self.path.parent.glob(f".{glob.escape(self.path.name)}.*.tmp"):
            pid = tmp.name[len(self.path.name) + 2:].split(".", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)

    def __enter__(self):
        self._remove_orphans()
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.{os.getpid()}.",
                                        suffix=".tmp")
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
        return self.fh

    def __exit__(self, exc_type, exc, tb):
        self.fh.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


def ensure_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and check we can write there, with an error that names it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".halign_write_probe.{os.getpid()}"  # per process: ranks probe the same folder
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"output directory is not writable: {path} ({err.strerror})") from None
    return path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any) -> str:
    """Hash of a JSON-serialisable object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def check_no_secrets(config: Any, where: str = "config") -> None:
    """Refuse to persist anything that looks like a credential (keys are named, values never shown)."""
    if isinstance(config, dict):
        for key, value in config.items():
            lowered = str(key).lower()
            if SECRET_KEY_RE.search(lowered) and value and not lowered.endswith("_env"):
                raise ValueError(f"{where}.{key} looks like a secret and would be written to disk; "
                                 f"pass the name of an environment variable instead (e.g. {key}_env)")
            check_no_secrets(value, f"{where}.{key}")
    elif isinstance(config, (list, tuple)):
        for i, value in enumerate(config):
            check_no_secrets(value, f"{where}[{i}]")


def write_manifest(out_dir: str | Path, stage: str, config: dict, inputs: dict[str, str | Path] | None = None,
                   started: float | None = None, extra: dict | None = None) -> Path:
    """Write `manifest.json` for one stage's output directory."""
    check_no_secrets(config)
    input_hashes = {}
    for name, p in (inputs or {}).items():
        p = Path(p)
        if p.is_file():
            input_hashes[name] = {"path": str(p), "sha256": file_sha256(p)}
        else:
            input_hashes[name] = {"path": str(p)}
    manifest = {
        "stage": stage,
        "config": config,
        "inputs": input_hashes,
        "versions": package_versions(),
        "git_revision": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - started, 3) if started else None,
    }
    if extra:
        check_no_secrets(extra, "extra")
        manifest.update(extra)
    return write_json(Path(out_dir) / "manifest.json", manifest)
