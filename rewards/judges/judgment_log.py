"""judgments.jsonl written as judgments complete, resumable after any kill, with no temporary files.

Layout of the file: the judged rows in the order they finished, then (only once a run ends) the failed rows.
A killed run leaves a valid prefix, at worst with a torn last line. The next run:
  * cuts the file at the first torn or failed row (those are asked again; failed rows are not cached),
  * appends again any judged row that came after that point, then continues appending,
so every row is written in place by appends and truncation only, and nothing is ever renamed into place.
One run at a time holds an exclusive lock on the file (released by the OS when a process dies).

Also here: reading the inputs with errors that name the file and line, and the checks on candidates
(missing or empty answers, duplicate ids, over-long answers).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path



def is_judged(row: dict) -> bool:
    return row.get("error") is None and row.get("score") is not None


class JudgmentLog:
    def __init__(self, path: Path, fresh: bool = False):
        """`fresh`: start an empty file (the rows there were made from other inputs or settings)."""
        self.path = path
        self.fh = open(path, "a+b")  # created with the umask's mode, like any file the user writes
        try:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise ValueError(f"another run is writing {path}: wait for it, or give this run another --output")
        self.rows: dict[str, dict] = {}  # candidate_id -> judged row, everything in the file
        self.resumed = 0
        if fresh:
            self.fh.truncate(0)
        self._recover()
        self.resumed = len(self.rows)

    def _recover(self) -> None:
        self.fh.seek(0)
        data = self.fh.read()
        offset, cut, keep_after_cut = 0, None, []
        for line in data.splitlines(keepends=True):
            row = None
            if line.endswith(b"\n"):
                try:
                    row = json.loads(line)
                except ValueError:
                    row = None
            ok = isinstance(row, dict) and "candidate_id" in row
            if not ok:  # torn write (only ever the last line): cut it off
                cut = offset if cut is None else cut
                break
            if cut is None and not is_judged(row):
                cut = offset
            elif cut is not None and is_judged(row):
                keep_after_cut.append(row)
            elif cut is None:
                self.rows.setdefault(str(row["candidate_id"]), row)
            offset += len(line)
        if cut is not None:
            self.fh.truncate(cut)
            self.fh.seek(0, os.SEEK_END)
            for row in keep_after_cut:
                self.add(row)

    def add(self, row: dict) -> None:
        """Append one row (a candidate already in the file is not written twice)."""
        cid = str(row.get("candidate_id"))
        if is_judged(row):
            if cid in self.rows:
                return
            self.rows[cid] = row
        self.fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        self.fh.flush()  # in the OS once written: a killed process loses at most the row being written

    def close(self) -> None:
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()

    def digest(self) -> tuple[str, int]:
        """(sha256, row count) of the file as it is now."""
        sha, rows = hashlib.sha256(), 0
        with open(self.path, "rb") as fh:
            for line in fh:
                sha.update(line)
                rows += 1
        return sha.hexdigest(), rows


def remove_stale_temp_files(folder: Path, names: list[str]) -> list[Path]:
    """Temp files `.NAME.*.tmp` a killed writer left behind (we hold the output lock, so none is live)."""
    removed = []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------------------------- inputs

def duplicates(values) -> list:
    seen, dup = set(), []
    for v in values:
        if v in seen and v not in dup:
            dup.append(v)
        seen.add(v)
    return dup


def answer_problem(candidate: dict) -> str | None:
    """Why a candidate's answer cannot be judged (it then fails with this reason and is never scored)."""
    if "text" not in candidate or candidate["text"] is None:
        return "no answer: 'text' is missing or null"
    if not isinstance(candidate["text"], str):
        return f"answer 'text' is a {type(candidate['text']).__name__}, expected a string"
    if not candidate["text"].strip():
        return "empty answer: 'text' is empty or only whitespace"
    return None
