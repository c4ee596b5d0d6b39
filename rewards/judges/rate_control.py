"""Client-side flow control shared by every request of one judge run.

`RateController` decides when the next request may leave:
  * a concurrency window that starts small and doubles per round of successes (slow start), so a run
    against an endpoint that refuses everything (bad key, no quota) stops after a handful of calls, not 64;
  * a request-rate cap learnt from the endpoint: when 429s become a real share of the answers (>= 25%), the
    cap is set to 90% of the rate the endpoint was actually admitting, and every second without a cut raises
    it by 5%, so the run settles just under the endpoint's limit (scattered 429s are only retried);
  * optional fixed caps, `--rpm` and `--tpm`, and the caps the endpoint announces in `x-ratelimit-*` headers;
  * retries and re-asks go ahead of fresh items when they wait for a slot, so unfinished chains finish first.

`LatencyTracker` gives each request a deadline from the latencies seen so far, so a request that hangs is cut
and re-sent long before the HTTP timeout.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import email.utils
import heapq
import itertools
import math
import random
import re
import time

MAX_RETRY_AFTER = 300.0  # seconds
CUT_SHARE = 0.25  # share of 429s among recent answers that means "over the endpoint's limit"
CUT_MIN_ANSWERS = 20
MIN_RATE = 0.2  # requests/s: the adaptive cap never goes below this
RAISE_EVERY = 1.0  # seconds without a 429 between two 5% raises
RATE_WINDOW = 2.0  # seconds of successes that measure what the endpoint admits


def parse_duration(text: str | None) -> float | None:
    """OpenAI's reset format ("1s", "6m0s", "250ms", "1h2m3.5s") or bare seconds, in seconds."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    total, matched = 0.0, False
    for value, unit in re.findall(r"([\d.]+)(ms|h|m|s)", text):
        total += float(value) * {"ms": 1e-3, "h": 3600.0, "m": 60.0, "s": 1.0}[unit]
        matched = True
    return total if matched else None


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, `retry-after` (seconds or an HTTP date); None if absent."""
    headers = headers or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            date = email.utils.parsedate_tz(value)
            if date is None:
                continue
            seconds = email.utils.mktime_tz(date) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def backoff_delay(attempt: int, retry_after: float | None, base: float, cap: float) -> float:
    """Seconds before retry number `attempt`."""
    if retry_after is not None:
        # The server said when; a little jitter keeps many waiting requests from returning together, and
        # the cap keeps a bogus header from stalling the run for hours.
        return min(retry_after, MAX_RETRY_AFTER) * (1 + 0.1 * random.random())
    top = min(cap, base * 2 ** (attempt - 1))
    return top / 2 + random.random() * top / 2  # "equal jitter": never near zero, never in lockstep


class RateController:
    def __init__(self, max_concurrency: int, rpm: float | None = None, tpm: float | None = None,
                 start_concurrency: int = 4):
        self.max_concurrency = max(1, max_concurrency)
        self.window = min(self.max_concurrency, max(1, start_concurrency))
        self.in_flight = 0
        self.user_rpm, self.user_tpm = rpm, tpm
        self.header_rpm: float | None = None  # what x-ratelimit-limit-* says
        self.header_tpm: float | None = None
        self.rate: float | None = None  # learnt requests/s cap; None until the first 429
        self.last_cut = 0.0
        self.last_raise = 0.0
        self.limited = 0  # 429s seen (rate limits, not quota errors)
        self.pause_until = 0.0  # the endpoint said "no requests left until reset"
        self._next_request_at = 0.0
        self._next_tokens_at = 0.0
        self._ok_times: collections.deque[float] = collections.deque()
        self._limited_times: collections.deque[float] = collections.deque()
        self._first_send: float | None = None
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._seq = itertools.count()

    # -- caps

    def request_interval(self) -> float:
        """Seconds between two request starts under the tightest request-rate cap (0 = no cap)."""
        caps = [r for r in (self.rate, self.user_rpm and self.user_rpm / 60, self.header_rpm and self.header_rpm / 60)
                if r]
        return 1.0 / min(caps) if caps else 0.0

    def tokens_per_second(self) -> float | None:
        caps = [t / 60 for t in (self.user_tpm, self.header_tpm) if t]
        return min(caps) if caps else None

    # -- one request

    async def acquire(self, priority: int, est_tokens: int = 0) -> float:
        """Wait for a slot (lower priority number first), then for the pacing; returns the send time."""
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        self._hand_out()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release_slot()  # we were handed a slot as we were cancelled: pass it on
            raise
        try:
            await self._pace(est_tokens)
        except BaseException:
            self._release_slot()
            raise
        return time.monotonic()

    async def _pace(self, est_tokens: int) -> None:
        now = time.monotonic()
        start = max(now, self.pause_until, self._next_request_at)
        tps = self.tokens_per_second()
        if tps and est_tokens:
            start = max(start, self._next_tokens_at)
            self._next_tokens_at = start + est_tokens / tps
        self._next_request_at = start + self.request_interval()
        if self._first_send is None:
            self._first_send = start
        if start > now:
            await asyncio.sleep(start - now)

    def release(self, outcome: str, sent_at: float) -> None:
        """outcome: "ok" (an answer came back), "limited" (429 rate limit) or "error" (anything else)."""
        now = time.monotonic()
        if outcome == "ok":
            self._ok_times.append(now)
            self._prune(now)
            if self.window < self.max_concurrency:
                self.window += 1  # +1 per success = doubling per round trip
            if self.rate is not None and now - max(self.last_raise, self.last_cut) >= RAISE_EVERY:
                self.rate *= 1.05
                self.last_raise = now
        elif outcome == "limited":
            self.limited += 1
            self._limited_times.append(now)
            self._prune(now)
            ok, limited = len(self._ok_times), len(self._limited_times)
            # Cut only when 429s are a real share of enough answers (>= 25% of >= 20 in the last 2 s): above the
            # endpoint's limit the share grows with the excess, while scattered 429s (another client's burst, a
            # busy replica) say nothing about our rate and are simply retried; cutting on them would ratchet
            # the rate down, since each cut is measured from what we ourselves sent. One cut per round: the
            # 429s of one burst all report the same excess.
            real_share = ok + limited >= CUT_MIN_ANSWERS and limited >= CUT_SHARE * (ok + limited)
            if sent_at >= self.last_cut and (not ok or real_share):
                # What the endpoint admitted lately: successes over the window (or over the run so far, when
                # it is younger than the window; never over less than 0.25 s, which would overstate it).
                span = max(0.25, min(RATE_WINDOW, now - self._first_send)) if self._first_send else RATE_WINDOW
                admitted = ok / span
                if not ok:  # nothing admitted lately to measure: halve the window instead
                    self.window = max(1, self.window // 2)
                else:  # 90% of what was admitted, and never a raise
                    self.rate = max(MIN_RATE, min(self.rate or math.inf, 0.9 * admitted))
                self.last_cut = now
        self._release_slot()

    def _prune(self, now: float) -> None:
        for times in (self._ok_times, self._limited_times):
            while times and times[0] < now - RATE_WINDOW:
                times.popleft()

    def _release_slot(self) -> None:
        self.in_flight -= 1
        self._hand_out()

    def _hand_out(self) -> None:
        while self._waiters and self.in_flight < self.window:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    # -- what the endpoint announces

    def observe_headers(self, headers) -> None:
        """Read `x-ratelimit-*` (OpenAI, Azure, many proxies): announced limits cap the rate; an exhausted
        allowance pauses every request until its reset."""
        if not headers:
            return
        get = headers.get
        for kind in ("requests", "tokens"):
            limit = _number(get(f"x-ratelimit-limit-{kind}"))
            if limit:
                # OpenAI's limits are per minute; keep 5% headroom for other clients on the same key.
                if kind == "requests":
                    self.header_rpm = 0.95 * limit
                else:
                    self.header_tpm = 0.95 * limit
            remaining = _number(get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(get(f"x-ratelimit-reset-{kind}"))
            if remaining is not None and remaining <= 0 and reset:
                self.pause_until = max(self.pause_until, time.monotonic() + min(reset, 300.0))

    def describe(self) -> dict:
        return {"rate_cap_per_s": round(self.rate, 3) if self.rate else None, "rate_limited": self.limited,
                "window": self.window}


def _number(value) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class LatencyTracker:
    """Per-request deadline = `factor` x the 99th percentile of recent successful latencies, within
    [floor, ceiling]; the ceiling (the request timeout) until `min_samples` latencies have been seen."""

    def __init__(self, floor: float, ceiling: float, factor: float = 4.0, min_samples: int = 20,
                 keep: int = 500):
        self.floor, self.ceiling, self.factor = min(floor, ceiling), ceiling, factor
        self.min_samples, self.keep = min_samples, keep
        self._recent: collections.deque[float] = collections.deque()
        self._sorted: list[float] = []
        self.cut = 0  # requests cut at their deadline

    def add(self, seconds: float) -> None:
        self._recent.append(seconds)
        bisect.insort(self._sorted, seconds)
        if len(self._recent) > self.keep:
            old = self._recent.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def deadline(self) -> float:
        if len(self._sorted) < self.min_samples:
            return self.ceiling
        p99 = self._sorted[min(len(self._sorted) - 1, int(0.99 * len(self._sorted)))]
        return min(self.ceiling, max(self.floor, self.factor * p99))
