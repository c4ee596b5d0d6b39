"""Async judge calls over any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM's server, Ollama).

Judging is I/O-bound, so one process keeps `concurrency` requests in flight. Every finished call is written
to an on-disk cache at once (one small JSON file per request hash, tmp + os.replace), so a run that is killed,
even with SIGKILL, and started again pays for none of the calls that had finished. A judgment either ends
with a validated verdict or is recorded as failed (no score, `error` set): a score is never made up.

The API key is read from the environment only and is scrubbed from every error string we keep or print.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

from halign.data_gen.io import stable_hash
from halign.rewards.judges.disk_cache import DiskCache

PLACEHOLDER_KEY = "EMPTY"  # what vLLM / Ollama accept when started without --api-key
MAX_RETRY_AFTER = 300.0  # seconds

# $ per 1M tokens (input, output), list prices when this table was written; override with `prices=` or
# `--price-in/--price-out`. A model missing here reports its cost as unknown rather than as $0.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60),
                                                   "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60)}


class InvalidOutput(ValueError):
    """The model answered, but not in the required format; the message is sent back in the re-ask."""


class FatalJudgeError(ValueError):
    """The whole run cannot succeed (bad key, unknown model): stop instead of failing every item."""


class RequestFailed(Exception):
    """One request failed for good (retries spent, or an error retrying cannot fix)."""


# ---------------------------------------------------------------------------------------------- secrets

def is_loopback(url: str | None) -> bool:
    host = urlparse(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_key(api_key_env: str = "OPENAI_API_KEY", base_url: str | None = None) -> str:
    """The key comes from the environment only; local servers without a key get a placeholder."""
    key = os.environ.get(api_key_env, "").strip()
    if key:
        return key
    if is_loopback(base_url or os.environ.get("OPENAI_BASE_URL")):
        return PLACEHOLDER_KEY
    raise ValueError(f"no API key: set the environment variable {api_key_env} (or name another one with "
                     f"--api-key-env); only a loopback --base-url may run without a key")


_KEY_PATTERNS = [re.compile(r"sk-[A-Za-z0-9_\-*]{6,}"), re.compile(r"(?i)(bearer\s+)\S+")]


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Remove the key (and anything shaped like one) from text that may reach a file or a terminal.

    Provider error bodies can echo the key back ("Incorrect API key provided: sk-..."), so exception strings
    are never stored unscrubbed.
    """
    for secret in secrets:
        if secret and secret != PLACEHOLDER_KEY:
            text = text.replace(secret, "[REDACTED]")
    text = _KEY_PATTERNS[0].sub("[REDACTED]", text)
    return _KEY_PATTERNS[1].sub(r"\1[REDACTED]", text)


# ---------------------------------------------------------------------------------------------- records

@dataclass
class JudgeRequest:
    """One judge call. `key_material` (judge name, model, template hash, inputs) decides the cache key."""

    key_material: dict
    messages: list[dict]
    validator: Callable[[str], dict]

    @property
    def key(self) -> str:
        return stable_hash(self.key_material)


@dataclass
class JudgeResult:
    parsed: dict | None
    error: str | None = None
    usage: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    cached: bool = False
    raw: str | None = None


@dataclass
class UsageStats:
    """What one judge spent in this run. Cache hits cost nothing, so they add no tokens here."""

    items: int = 0
    cache_hits: int = 0
    failures: int = 0
    calls: int = 0  # HTTP requests sent, retries and re-asks included
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    wall_seconds: float = 0.0

    def to_manifest(self) -> dict:
        # Keys avoid the word "token": write_manifest refuses credential-looking keys.
        d = asdict(self)
        d["usage"] = {"prompt": d.pop("prompt_tokens"), "completion": d.pop("completion_tokens")}
        return d


@dataclass
class ClientConfig:
    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 16
    timeout: float = 60.0  # seconds, whole request
    max_retries: int = 5  # on 429, 5xx, timeouts, connection errors
    max_reasks: int = 2  # on malformed or off-schema output
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    temperature: float = 0.0
    max_tokens: int | None = 512
    json_mode: bool = False  # response_format=json_object; not every server supports it
    cache_dir: str | Path | None = None
    prices: dict[str, tuple[float, float]] | None = None

    def price(self) -> tuple[float, float] | None:
        table = {**DEFAULT_PRICES, **(self.prices or {})}
        return table.get(self.model)

    def key_material(self, judge: str, template_sha256: str, inputs: dict) -> dict:
        """What decides one verdict, hence its cache key: judge, model, template, inputs, sampling settings."""
        return {"judge": judge, "model": self.model, "template_sha256": template_sha256, "inputs": inputs,
                "params": {"temperature": self.temperature, "max_tokens": self.max_tokens}}

    def describe(self) -> dict:
        """The endpoint settings for a judge's manifest: the key's variable name, never the key."""
        return {"model": self.model, "base_url": self.base_url, "api_key_env": self.api_key_env,
                "temperature": self.temperature, "max_completion_length": self.max_tokens,
                "concurrency": self.concurrency, "timeout": self.timeout, "max_retries": self.max_retries,
                "max_reasks": self.max_reasks, "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "price_per_1m": self.price()}


# ---------------------------------------------------------------------------------------------- client

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


def _httpx():
    # openai >= 3 ships on httpx2; older releases on httpx. Both expose the same Limits/AsyncClient API.
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx


class LLMClient:
    """Runs a batch of `JudgeRequest`s for one judge: cache, bounded concurrency, retries, re-asks."""

    def __init__(self, config: ClientConfig, name: str = "judge"):
        self.config = config
        self.name = name
        self.api_key = resolve_api_key(config.api_key_env, config.base_url)
        self.cache = DiskCache(config.cache_dir) if config.cache_dir else None
        self.stats = UsageStats()
        self._httpx = _httpx()

    # -- public API

    def run(self, requests: list[JudgeRequest], progress: bool = True) -> list[JudgeResult]:
        """Blocking wrapper; inside a running event loop, await `arun` instead."""
        return asyncio.run(self.arun(requests, progress=progress))

    async def arun(self, requests: list[JudgeRequest], progress: bool = True) -> list[JudgeResult]:
        started = time.perf_counter()
        self.stats.items += len(requests)
        # Identical requests (say two samples with the same text) are asked once and share the answer.
        by_key: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_key.setdefault(req.key, []).append(i)
        results: list[JudgeResult | None] = [None] * len(requests)
        todo: list[tuple[str, JudgeRequest]] = []
        for key, idxs in by_key.items():
            req = requests[idxs[0]]
            hit = self.cache.get(key, req.key_material) if self.cache else None
            if hit is not None:
                for i in idxs:
                    results[i] = JudgeResult(parsed=hit["parsed"], usage=hit["usage"], cached=True, raw=hit["raw"])
            else:
                todo.append((key, req))
        hits = sum(r is not None for r in results)
        self.stats.cache_hits += hits
        calls_before, failures = self.stats.calls, 0

        bar = _progress_bar(len(requests), self.name, enabled=progress)
        bar.update(hits)
        try:
            if not todo:  # all cached: no client, no connection, no call
                return results  # type: ignore[return-value]
            async with self._openai() as client:
                sem = asyncio.Semaphore(self.config.concurrency)
                tasks = [asyncio.ensure_future(self._one(client, sem, key, req)) for key, req in todo]
                try:
                    for fut in asyncio.as_completed(tasks):
                        key, res = await fut
                        for i in by_key[key]:
                            results[i] = res
                        if res.parsed is None:
                            failures += len(by_key[key])
                            self.stats.failures += len(by_key[key])
                        elapsed = max(time.perf_counter() - started, 1e-9)
                        bar.set_postfix({"calls/s": f"{(self.stats.calls - calls_before) / elapsed:.1f}",
                                         "cached": hits, "failed": failures}, refresh=False)
                        bar.update(len(by_key[key]))
                except BaseException:
                    # A fatal error (or Ctrl-C) stops the rest; what finished is already in the cache.
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
        finally:
            bar.close()
            self.stats.wall_seconds += time.perf_counter() - started
            self._update_cost()
        return results  # type: ignore[return-value]

    # -- internals

    def _openai(self):
        """The SDK client for one run (made per run: an async HTTP client is bound to its event loop)."""
        import openai

        n = max(1, self.config.concurrency)
        # The pool holds every request we allow in flight, so none waits for a connection; our own retry
        # loop counts every attempt, so the SDK must not retry behind our back (max_retries=0).
        http_client = openai.DefaultAsyncHttpxClient(
            limits=self._httpx.Limits(max_connections=n, max_keepalive_connections=n), timeout=self.config.timeout)
        return openai.AsyncOpenAI(api_key=self.api_key, base_url=self.config.base_url, max_retries=0,
                                  timeout=self.config.timeout, http_client=http_client)

    async def _one(self, client, sem, key: str, req: JudgeRequest) -> tuple[str, JudgeResult]:
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        messages = list(req.messages)
        reason = ""
        for ask in range(self.config.max_reasks + 1):
            if ask:
                self.stats.reasks += 1
            try:
                text, call_usage = await self._request(client, sem, messages)
            except RequestFailed as err:
                return key, JudgeResult(parsed=None, error=str(err), usage=usage)
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
            return key, result
        return key, JudgeResult(parsed=None, usage=usage,
                                error=f"invalid judge output after {self.config.max_reasks} re-ask(s): {reason}")

    async def _request(self, client, sem, messages: list[dict]) -> tuple[str, dict]:
        """One chat completion with retries; returns (content, usage) or raises RequestFailed."""
        import openai

        cfg = self.config
        body: dict[str, Any] = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature}
        if cfg.max_tokens is not None:
            body["max_tokens"] = cfg.max_tokens
        if cfg.json_mode:
            body["response_format"] = {"type": "json_object"}
        payload = json.dumps(body, ensure_ascii=False).encode()  # serialised once, not once per attempt
        attempt = 0
        while True:
            retry_after = None
            async with sem:
                self.stats.calls += 1
                try:
                    # The SDK's generic `post` (its documented way to any endpoint) rather than the typed
                    # `chat.completions.create`: same auth and error mapping, but without ~1 ms of CPU per call
                    # checking params against TypedDicts and building pydantic models, which made the client,
                    # not the endpoint, the bottleneck at ~300 calls/s. wait_for bounds the whole request;
                    # the HTTP read timeout alone restarts with every byte received.
                    resp = await asyncio.wait_for(
                        client.post("/chat/completions", content=payload, cast_to=self._httpx.Response),
                        timeout=cfg.timeout)
                    data = resp.json()
                    content = data["choices"][0]["message"]["content"]
                    u = data.get("usage") or {}
                    usage = {"prompt_tokens": int(u.get("prompt_tokens") or 0),
                             "completion_tokens": int(u.get("completion_tokens") or 0)}
                    self.stats.prompt_tokens += usage["prompt_tokens"]
                    self.stats.completion_tokens += usage["completion_tokens"]
                    return content if isinstance(content, str) else "", usage
                except (asyncio.TimeoutError, openai.APITimeoutError):
                    what = f"timed out after {cfg.timeout:g} s"
                except openai.APIStatusError as err:
                    status = err.status_code
                    what = f"HTTP {status}: {self._clean(err)}"
                    if status in (401, 403, 404):
                        # Wrong key, no access or unknown model: every other item would fail the same way.
                        raise FatalJudgeError(f"judge endpoint refused the request ({what})") from None
                    if status not in (408, 409, 429) and status < 500:
                        raise RequestFailed(what) from None
                    retry_after = parse_retry_after(err.response.headers)
                except openai.APIConnectionError as err:
                    what = f"connection error: {self._clean(err)}"
                except (ValueError, KeyError, IndexError, TypeError) as err:
                    # A 200 whose body is not a chat completion (proxy page, truncated body): try again.
                    what = f"malformed response: {type(err).__name__}"
            if attempt >= cfg.max_retries:
                raise RequestFailed(f"gave up after {attempt + 1} attempt(s): {what}")
            attempt += 1
            self.stats.retries += 1
            await asyncio.sleep(self._backoff(attempt, retry_after))

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            # The server said when; a little jitter keeps many waiting requests from returning together, and
            # the cap keeps a bogus header from stalling the run for hours.
            return min(retry_after, MAX_RETRY_AFTER) * (1 + 0.1 * random.random())
        cap = min(self.config.backoff_max, self.config.backoff_base * 2 ** (attempt - 1))
        return cap / 2 + random.random() * cap / 2  # "equal jitter": never near zero, never in lockstep

    def _clean(self, err: Exception) -> str:
        return scrub(str(err), [self.api_key])[:300]

    def _update_cost(self) -> None:
        price, s = self.config.price(), self.stats
        s.cost_usd = None if price is None else round((s.prompt_tokens * price[0]
                                                       + s.completion_tokens * price[1]) / 1e6, 6)


def _progress_bar(total: int, name: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: the bar shows on a terminal only, so logs and CI output stay free of bar redraws.
    return tqdm(total=total, desc=f"judge {name}", unit="item", disable=None if enabled else True,
                mininterval=0.5, smoothing=0.1)
