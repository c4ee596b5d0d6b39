"""Progress for long judge runs: a bar on a terminal; a plain line every N seconds otherwise (nohup, a batch
scheduler, CI), so a log shows a 100k-item run moving. Both show failures, spend and ETA."""

from __future__ import annotations

import os
import sys
import time

PROGRESS_EVERY = float(os.environ.get("HALIGN_PROGRESS_EVERY", "30"))  # seconds between plain lines


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total: int, name: str, enabled: bool = True, every: float | None = None, stream=None):
        self.total, self.name, self.done = total, name, 0
        self.stream = stream or sys.stderr
        self.every = PROGRESS_EVERY if every is None else every
        self.started = self.last_line = time.monotonic()
        self.postfix: dict = {}
        self.bar = None
        self.plain = False
        if enabled and total:
            if getattr(self.stream, "isatty", lambda: False)():
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=f"judge {name}", unit="item", mininterval=0.5, smoothing=0.1,
                                file=self.stream)
            else:
                self.plain = True

    def update(self, n: int, **postfix) -> None:
        self.done += n
        self.postfix.update(postfix)
        if self.bar is not None:
            self.bar.set_postfix({k: v for k, v in self.postfix.items() if v is not None}, refresh=False)
            self.bar.update(n)
        elif self.plain and time.monotonic() - self.last_line >= self.every:
            self.print_line()

    def eta(self, started_done: int = 0) -> float | None:
        elapsed = time.monotonic() - self.started
        rate = (self.done - started_done) / elapsed if elapsed > 0 else 0
        return (self.total - self.done) / rate if rate > 0 else None

    def print_line(self) -> None:
        self.last_line = time.monotonic()
        eta = self.eta()
        extra = ", ".join(f"{k} {v}" for k, v in self.postfix.items() if v is not None)
        print(f"judge {self.name}: {self.done}/{self.total} items ({100 * self.done / max(self.total, 1):.1f}%)"
              f"{', ' + extra if extra else ''}, elapsed {_duration(time.monotonic() - self.started)}"
              f"{', ETA ' + _duration(eta) if eta is not None and self.done < self.total else ''}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain and self.done:
            self.print_line()
