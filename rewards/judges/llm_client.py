"""Async judge calls over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM's server, Ollama).

Judging is I/O-bound, so one process keeps up to `concurrency` chains in flight, each an item's whole life:
first ask, retries, re-asks. A fixed pool of workers runs the chains, so an item that needs a retry finishes
before a new item starts and a 100k-item run holds `concurrency` coroutines, not 100k. Every request goes
through one `RateController` (rate_control.py): slow start, the rate the endpoint admits, --rpm/--tpm, and
through a latency-derived deadline, so a hung request is cut and re-sent instead of holding the run.

Every finished call is written to the shared on-disk cache at once (disk_cache.py), so a run that is killed,
even with SIGKILL, and started again pays for none of the calls that had finished. A judgment either ends
with a validated verdict or is recorded as failed (no score, `error` set): a score is never made up. Errors
no retry can fix (bad key, unknown model, no quota, the same 400 for every item) stop the run at once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sys
import time
from typing import Any, Callable

# Re-exported: judges and tests import these names from here.
from halign.rewards.judges.disk_cache import DiskCache
from halign.rewards.judges.endpoint import (DEFAULT_PRICES, httpx_module, PLACEHOLDER_KEY, ClientConfig, FatalJudgeError,  # noqa: F401
                                            InvalidOutput, JudgeRequest, JudgeResult, RequestFailed, StopRun,
                                            UsageStats, estimate_cost, estimate_prompt_tokens, is_loopback,
                                            resolve_api_key, scrub, usage_dict)
from halign.rewards.judges.progress import Progress
from halign.rewards.judges.rate_control import LatencyTracker, RateController, backoff_delay, parse_retry_after

FRESH, CONTINUATION = 1, 0  # slot priorities: a started chain goes first


class _DeadlineCut(Exception):
    pass


class _Stopped(Exception):
    """The run is stopping (budget): this chain ends without a result; a rerun asks it again."""


class LLMClient:
    """Runs a batch of `JudgeRequest`s for one judge: cache, flow control, retries, re-asks, budget."""

    def __init__(self, config: ClientConfig, name: str = "judge", log: Callable[[str], None] | None = None):
        self.config = config
        self.name = name
        self.api_key = resolve_api_key(config.api_key_env, config.base_url)
        self.cache = DiskCache(config.cache_dir) if config.cache_dir else None
        self.stats = UsageStats()
        self.cache_problems: list[str] = []
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if config.budget is not None and config.price() is None:
            raise ValueError(f"--budget needs a price for model {config.model!r}: pass --price-in/--price-out")

    # -- public API

    def run(self, requests: list[JudgeRequest], progress: bool = True,
            on_result: Callable[[int, JudgeResult], None] | None = None) -> list[JudgeResult]:
        """Blocking wrapper; inside a running event loop, await `arun` instead."""
        return asyncio.run(self.arun(requests, progress=progress, on_result=on_result))

    async def arun(self, requests: list[JudgeRequest], progress: bool = True,
                   on_result: Callable[[int, JudgeResult], None] | None = None) -> list[JudgeResult]:
        """One result per request, in order. `on_result(i, result)` is called as each one becomes final."""
        started = time.perf_counter()
        self.stats.items += len(requests)
        # Identical requests (say two samples with the same text) are asked once and share the answer.
        by_key: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_key.setdefault(req.key, []).append(i)
        self._results: list[JudgeResult | None] = [None] * len(requests)
        self._by_key, self._on_result = by_key, on_result
        self._started, self._calls_at_start = time.monotonic(), self.stats.calls
        self._progress = Progress(len(requests), self.name, enabled=progress)
        todo: list[tuple[str, JudgeRequest]] = []
        for key, idxs in by_key.items():
            req = requests[idxs[0]]
            hit = self._cached(key, req)
            if hit is not None:
                self._finish(key, hit)
            else:
                todo.append((key, req))
        hits = sum(r is not None for r in self._results)
        self.stats.cache_hits += hits
        if self.cache_problems:
            self.log(f"judge {self.name}: {len(self.cache_problems)} cache entr(ies) failed validation and will "
                     f"be asked again; first: {self.cache_problems[0]}")
        try:
            if todo:  # all cached: no client, no connection, no call
                self.log(estimate_cost(self.config, [req.messages for _, req in todo]).line(self.name))
                if self.config.batch:
                    from halign.rewards.judges.batch import run_batches

                    async with self._openai() as client:
                        todo = await run_batches(self, client, todo, self.config.batch_poll)
            if todo:
                await self._run_chains(todo)
        finally:
            self._progress.close()
            self.stats.wall_seconds += time.perf_counter() - started
            self.stats.cost_usd = self._spent()
        return self._results  # type: ignore[return-value]

    # -- scheduling

    async def _run_chains(self, todo: list[tuple[str, JudgeRequest]]) -> None:
        cfg = self.config
        self.rate = RateController(cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm)
        self.latency = LatencyTracker(floor=cfg.deadline_floor, ceiling=cfg.timeout)
        self._fresh = collections.deque(todo)
        self._deferred: collections.deque[tuple[str, JudgeRequest]] = collections.deque()
        self._stop: StopRun | None = None
        self._fatal = False
        self._reserved = 0.0
        self._successes = 0
        self._last_success = time.monotonic()
        self._bad_final: collections.Counter[str] = collections.Counter()
        async with self._openai() as client:
            workers = [asyncio.ensure_future(self._worker(client)) for _ in range(max(1, cfg.concurrency))]
            try:
                done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                for t in done:
                    if t.exception() is not None:
                        raise t.exception()
            finally:
                # A fatal error (or Ctrl-C) stops the rest; what finished is already in the cache.
                for t in workers:
                    t.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        if self._stop is not None:
            raise self._stop

    async def _worker(self, client) -> None:
        while self._stop is None and not self._fatal:
            if self._fresh:
                key, req = self._fresh.popleft()
            elif self._deferred:
                key, req = self._deferred.popleft()
                await asyncio.sleep(0.2)  # another run is asking this one: look again in a moment
            else:
                return
            if self.cache is not None:
                claimed = await asyncio.to_thread(self._claim, key, req)
                if claimed is None:  # another live run is asking: wait for its answer, do not pay twice
                    self._deferred.append((key, req))
                    continue
                if claimed is not True:  # that run finished it in the meantime
                    self.stats.shared_waits += 1
                    self._finish(key, claimed)
                    continue
            try:
                result = await self._one(client, key, req)
            except _Stopped:
                continue
            finally:
                if self.cache is not None:
                    self.cache.release(key)
            self._finish(key, result)

    def _claim(self, key: str, req: JudgeRequest):
        """True: ours to ask. A JudgeResult: found in the cache after all. None: a live run holds it."""
        if not self.cache.claim(key):
            return None
        hit = self._cached(key, req, report=False)  # a bad entry was reported at the first look
        if hit is not None:
            self.cache.release(key)
            return hit
        return True

    def _cached(self, key: str, req: JudgeRequest, report: bool = True) -> JudgeResult | None:
        if self.cache is None:
            return None
        entry, problem = self.cache.get(key, req.key_material, req.validator)
        if problem and report:
            self.cache_problems.append(scrub(problem, [self.api_key]))
            self.stats.cache_rejected += 1
        if entry is None:
            return None
        return JudgeResult(parsed=entry["parsed"], usage=entry["usage"], cached=True, raw=entry["raw"])

    def _finish(self, key: str, result: JudgeResult) -> None:
        idxs = self._by_key[key]
        for i in idxs:
            self._results[i] = result
            if self._on_result is not None:
                self._on_result(i, result)
        if result.parsed is None:
            self.stats.failures += len(idxs)
        elapsed = max(time.monotonic() - self._started, 1e-9)
        spent = self._spent()
        self._progress.update(len(idxs), failed=self.stats.failures, cached=self.stats.cache_hits,
                              **{"calls/s": f"{(self.stats.calls - self._calls_at_start) / elapsed:.1f}",
                                 "spent": None if spent is None else f"${spent:.2f}"})

    # -- one item: ask, re-ask on bad output

    async def _one(self, client, key: str, req: JudgeRequest) -> JudgeResult:
        usage = usage_dict()
        messages = list(req.messages)
        reason = ""
        for ask in range(self.config.max_reasks + 1):
            if ask:
                self.stats.reasks += 1
            try:
                text, call_usage = await self._request(client, messages, continuation=ask > 0)
            except RequestFailed as err:
                self._check_same_failure(str(err).split(": ", 1)[-1] if str(err).startswith("gave up") else str(err))
                return JudgeResult(parsed=None, error=str(err), usage=usage)
            for k in usage:
                usage[k] += call_usage.get(k, 0)
            try:
                parsed = req.validator(text)
            except ValueError as err:
                reason = scrub(str(err), [self.api_key])
                # Show the model its own answer and what was wrong with it, then ask again.
                messages = messages + [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": f"Your reply was not valid: {reason}. Reply again with only "
                                                f"the JSON object in the required format."}]
                continue
            result = JudgeResult(parsed=parsed, usage=usage, raw=text)
            if self.cache:
                # In a worker thread: creating a file can take ~1 ms, which would stall every other request
                # on this event loop. Awaited, so the item counts as done only once its file exists.
                await asyncio.to_thread(self.cache.put, key, req.key_material, result)
            return result
        return JudgeResult(parsed=None, usage=usage,
                           error=f"invalid judge output after {self.config.max_reasks} re-ask(s): {reason}")

    # -- one request: flow control, deadline, retries

    def _body(self, messages: list[dict]) -> bytes:
        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature}
        if cfg.max_tokens is not None:
            body["max_tokens"] = cfg.max_tokens
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        return json.dumps(body, ensure_ascii=False).encode()  # serialised once, not once per attempt

    def _spent(self) -> float | None:
        cost = self.config.cost(self.stats.prompt_tokens, self.stats.completion_tokens)
        return None if cost is None else round(cost, 6)

    def _reserve(self, est_prompt: int) -> float:
        """Hold back the most this request can cost; stop the run instead if that would pass the budget."""
        cfg = self.config
        if cfg.budget is None:
            return 0.0
        worst = cfg.cost(est_prompt, cfg.max_tokens or 512) or 0.0
        if self._stop is not None or (self._spent() or 0.0) + self._reserved + worst > cfg.budget:
            if self._stop is None:
                self._stop = StopRun(f"budget reached: ${self._spent() or 0:.4f} spent of ${cfg.budget:.4f}; the next "
                                     f"request could pass it. Finished judgments are kept; rerun with a larger "
                                     f"--budget to continue")
            raise _Stopped
        self._reserved += worst
        return worst

    async def _request(self, client, messages: list[dict], continuation: bool) -> tuple[str, dict]:
        """One chat completion with retries; returns (content, usage) or raises RequestFailed."""
        import openai

        cfg = self.config
        payload = self._body(messages)
        est_prompt = estimate_prompt_tokens(messages)
        attempt = 0
        while True:
            retry_after = None
            reserved = self._reserve(est_prompt)
            sent_at = await self.rate.acquire(CONTINUATION if continuation or attempt else FRESH,
                                              est_prompt + (cfg.max_tokens or 0))
            outcome = "error"
            if self._fatal:  # another chain hit an error that stops the run: send nothing more
                self.rate.release(outcome, sent_at)
                self._reserved -= reserved
                raise _Stopped
            self.stats.calls += 1
            try:
                # The SDK's generic `post` (its documented way to any endpoint) rather than the typed
                # `chat.completions.create`: same auth and error mapping, but without ~1 ms of CPU per call
                # checking params against TypedDicts and building pydantic models.
                resp = await self._within_deadline(
                    client.post("/chat/completions", content=payload, cast_to=httpx_module().Response))
                self.rate.observe_headers(resp.headers)
                data = resp.json()
                content = data["choices"][0]["message"]["content"]
                u = data.get("usage") or {}
                usage = {"prompt_tokens": int(u.get("prompt_tokens") or 0),
                         "completion_tokens": int(u.get("completion_tokens") or 0)}
                self.stats.prompt_tokens += usage["prompt_tokens"]
                self.stats.completion_tokens += usage["completion_tokens"]
                outcome = "ok"
                self.latency.add(time.monotonic() - sent_at)
                self._successes += 1
                self._last_success = time.monotonic()
                return content if isinstance(content, str) else "", usage
            except _DeadlineCut as cut:
                self.stats.deadline_cuts += 1
                what = f"no answer within {cut.args[0]:.1f} s"
            except (asyncio.TimeoutError, openai.APITimeoutError):
                what = f"timed out after {cfg.timeout:g} s"
            except openai.APIStatusError as err:
                status = err.status_code
                what = f"HTTP {status}: {self._clean(err)}"
                self.rate.observe_headers(err.response.headers)
                try:
                    self._check_fatal(err, status, what)
                except FatalJudgeError:
                    self._fatal = True
                    raise
                if status == 429:
                    outcome = "limited"
                    self.stats.rate_limited += 1
                    # A rate limit is not the item's fault: retry it for as long as the endpoint answers
                    # anyone, without using up the item's retry budget.
                    if time.monotonic() - self._last_success < cfg.rate_limit_patience:
                        attempt -= 1
                elif status not in (408, 409) and status < 500:
                    raise RequestFailed(what) from None
                retry_after = parse_retry_after(err.response.headers)
            except openai.APIConnectionError as err:
                what = f"connection error: {self._clean(err)}"
            except (ValueError, KeyError, IndexError, TypeError) as err:
                # A 200 whose body is not a chat completion (proxy page, truncated body): try again.
                what = f"malformed response: {type(err).__name__}"
            finally:
                self.rate.release(outcome, sent_at)
                self._reserved -= reserved
            if attempt >= cfg.max_retries:
                raise RequestFailed(f"gave up after {attempt + 1} attempt(s): {what}")
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(backoff_delay(max(attempt, 1), retry_after, cfg.backoff_base, cfg.backoff_max))

    async def _within_deadline(self, coro):
        """Await `coro`, cutting it when it runs past the current deadline (re-read as latencies come in,
        so a request that hung before any latency was known is cut as soon as one is)."""
        task = asyncio.ensure_future(coro)
        start = time.monotonic()
        try:
            while True:
                limit = self.latency.deadline()
                left = start + limit - time.monotonic()
                if left <= 0:
                    task.cancel()
                    raise _DeadlineCut(limit)
                done, _ = await asyncio.wait({task}, timeout=min(left, 1.0))
                if done:
                    return task.result()
        except BaseException:
            task.cancel()
            raise

    def _check_fatal(self, err, status: int, what: str) -> None:
        """Raise FatalJudgeError for errors every other item would hit too."""
        if status in (401, 403, 404):
            hint = ""
            if status == 401 and self.api_key == PLACEHOLDER_KEY:
                hint = "; no key was sent to this host: name the variable holding its key with --api-key-env"
            raise FatalJudgeError(f"judge endpoint refused the request ({what}){hint}") from None
        code = f"{getattr(err, 'code', '')} {getattr(err, 'type', '')} {what}"
        if status == 429 and "insufficient_quota" in code:
            raise FatalJudgeError(f"judge endpoint says the account has no quota left ({what})") from None

    def _check_same_failure(self, error: str) -> None:
        """The same final error (say a 400 for a parameter the model rejects, or an unreachable host) on the
        first few distinct items, with nothing succeeding, would be the same for all the others: stop."""
        if self._successes:
            return
        self._bad_final[error] += 1
        if self._bad_final[error] >= self.config.fatal_400_items:
            self._fatal = True
            raise FatalJudgeError(f"the first {self._bad_final[error]} distinct items all failed the same way and "
                                  f"nothing has succeeded: {error}")

    def _clean(self, err: Exception) -> str:
        return scrub(str(err), [self.api_key])[:300]

    def _openai(self):
        """The SDK client for one run (made per run: an async HTTP client is bound to its event loop)."""
        import openai

        n = max(1, self.config.concurrency)
        # The pool holds every request we allow in flight, so none waits for a connection; our own retry
        # loop counts every attempt, so the SDK must not retry behind our back (max_retries=0). The base URL
        # is always explicit, so $OPENAI_BASE_URL cannot send the key somewhere resolve_api_key did not check.
        http_client = openai.DefaultAsyncHttpxClient(
            limits=httpx_module().Limits(max_connections=n, max_keepalive_connections=n), timeout=self.config.timeout)
        return openai.AsyncOpenAI(api_key=self.api_key, base_url=self.config.url, max_retries=0,
                                  timeout=self.config.timeout, http_client=http_client)
