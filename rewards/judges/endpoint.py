"""What a judge needs to know about its endpoint: settings, which key may go where, prices, usage, errors.

Key safety: `OPENAI_API_KEY` is sent only to the OpenAI API host. Any other `--base-url` (a vLLM server, a
colleague's proxy) gets no key at all unless the user names the variable that holds its key with
`--api-key-env`. The base URL is always passed to the SDK explicitly, so an `OPENAI_BASE_URL` in the
environment cannot redirect the OpenAI key either.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from halign.data_gen.io import stable_hash

OPENAI_URL = "https://api.openai.com/v1"
OPENAI_HOSTS = ("api.openai.com",)
PLACEHOLDER_KEY = "EMPTY"  # what vLLM / Ollama accept when started without --api-key; not a secret

# $ per 1M tokens (input, output), list prices when this table was written; override with `prices=` or
# `--price-in/--price-out`. A model missing here reports its cost as unknown rather than as $0.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {"gpt-4o": (2.50, 10.00), "gpt-4o-mini": (0.15, 0.60),
                                                   "gpt-4.1": (2.00, 8.00), "gpt-4.1-mini": (0.40, 1.60)}


class InvalidOutput(ValueError):
    """The model answered, but not in the required format; the message is sent back in the re-ask."""


class FatalJudgeError(ValueError):
    """The whole run cannot succeed (bad key, unknown model, no quota): stop instead of failing every item."""


class StopRun(ValueError):
    """The run stopped cleanly before its end (budget reached); what finished is kept and a rerun continues."""


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


def effective_base_url(base_url: str | None) -> str:
    """The URL requests really go to: --base-url, else $OPENAI_BASE_URL (as the SDK would), else OpenAI."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")


def is_openai_host(url: str) -> bool:
    return (urlparse(url).hostname or "").lower() in OPENAI_HOSTS


def resolve_api_key(api_key_env: str | None = None, base_url: str | None = None) -> str:
    """The key for this endpoint, from the environment only.

    `api_key_env` None means the user named no variable: the OpenAI host gets `OPENAI_API_KEY`, any other
    host gets no key (a placeholder the SDK needs). A named variable is sent wherever the user points it.
    """
    url = effective_base_url(base_url)
    if api_key_env is None:
        if not is_openai_host(url):
            return PLACEHOLDER_KEY
        api_key_env = "OPENAI_API_KEY"
    key = os.environ.get(api_key_env, "").strip()
    if key:
        return key
    if is_loopback(url):
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


def httpx_module():
    # openai >= 3 ships on httpx2; older releases on httpx. Both expose the same Limits/AsyncClient API.
    try:
        import httpx2 as httpx
    except ImportError:
        import httpx
    return httpx


# ---------------------------------------------------------------------------------------------- records

@dataclass
class UsageStats:
    """What one judge spent in this run. Cache hits cost nothing, so they add no tokens here."""

    items: int = 0
    cache_hits: int = 0
    cache_rejected: int = 0  # cache entries that failed validation on read and were asked again
    shared_waits: int = 0  # items another run was already asking: waited for its answer instead of paying
    failures: int = 0
    calls: int = 0  # HTTP requests sent, retries, re-asks and re-sent hung requests included
    retries: int = 0
    rate_limited: int = 0  # 429 rate-limit replies (retried without using up the retry budget)
    deadline_cuts: int = 0  # requests cut at their latency-derived deadline and re-sent
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
    api_key_env: str | None = None  # None: OPENAI_API_KEY to the OpenAI host only, no key elsewhere
    concurrency: int = 16
    timeout: float = 60.0  # seconds, whole request: the deadline's ceiling
    deadline_floor: float = 3.0  # seconds: the shortest latency-derived deadline
    max_retries: int = 5  # on 5xx, timeouts and connection errors (429 rate limits do not count)
    max_reasks: int = 2  # on malformed or off-schema output
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    rate_limit_patience: float = 600.0  # seconds of nothing but 429s before a 429 counts as a failure
    temperature: float = 0.0
    max_tokens: int | None = 512
    json_mode: bool = False  # response_format=json_object; not every server supports it
    cache_dir: str | Path | None = None
    prices: dict[str, tuple[float, float]] | None = None
    rpm: float | None = None  # requests per minute cap
    tpm: float | None = None  # tokens per minute cap (prompt estimate + max_tokens per request)
    budget: float | None = None  # $: stop before spending more in this run
    fatal_400_items: int = 3  # the same 400 on this many distinct items, before any success, stops the run
    batch: bool = False  # through the Batch API (batch.py): half price on OpenAI, answers within 24 h
    batch_poll: float = 30.0  # seconds between two looks at a submitted batch

    def price(self) -> tuple[float, float] | None:
        table = {**DEFAULT_PRICES, **(self.prices or {})}
        return table.get(self.model)

    @property
    def url(self) -> str:
        return effective_base_url(self.base_url)

    def key_material(self, judge: str, template_sha256: str, inputs: dict, messages: list[dict] | None = None) -> dict:
        """What decides one verdict, hence its cache key: endpoint, model, judge, template, inputs, sampling
        settings and the exact messages sent."""
        material = {"judge": judge, "endpoint": self.url, "model": self.model, "template_sha256": template_sha256,
                    "inputs": inputs, "params": {"temperature": self.temperature, "max_tokens": self.max_tokens,
                                                 "json_mode": self.json_mode}}
        if messages is not None:
            material["messages_sha256"] = stable_hash(messages)
        return material

    def describe(self) -> dict:
        """The endpoint settings for a judge's manifest: the key's variable name, never the key."""
        return {"model": self.model, "base_url": self.url, "api_key_env": self.api_key_env,
                "temperature": self.temperature, "max_completion_length": self.max_tokens,
                "concurrency": self.concurrency, "timeout": self.timeout, "max_retries": self.max_retries,
                "max_reasks": self.max_reasks, "cache_dir": str(self.cache_dir) if self.cache_dir else None,
                "rpm": self.rpm, "tpm": self.tpm, "budget_usd": self.budget, "price_per_1m": self.price(),
                "batch": self.batch}

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float | None:
        price = self.price()
        # OpenAI bills the Batch API at half price (the few live re-asks of a batch run are counted the same).
        scale = 0.5 if self.batch else 1.0
        return None if price is None else scale * (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


def estimate_prompt_tokens(messages: list[dict]) -> int:
    """~4 characters per token (English, BPE tokenizers): good enough for an estimate and for --tpm pacing."""
    return sum(len(str(m.get("content", ""))) for m in messages) // 4 + 4 * len(messages)


@dataclass
class CostEstimate:
    requests: int
    prompt_tokens: int
    completion_tokens_max: int
    cost_usd: float | None  # prompt tokens + half of max_tokens per reply: a typical judge reply
    cost_usd_max: float | None  # every reply as long as max_tokens

    def line(self, name: str) -> str:
        if self.cost_usd is None:
            money = "cost unknown (no price for this model: pass --price-in/--price-out)"
        else:
            money = f"~${self.cost_usd:.2f} (at most ${self.cost_usd_max:.2f} if every reply hits max_tokens)"
        return (f"judge {name}: {self.requests} request(s) to send, ~{self.prompt_tokens:,} prompt tokens, "
                f"{money}; re-asks, retries and re-sent requests add to this")


def estimate_cost(config: ClientConfig, messages_list: list[list[dict]]) -> CostEstimate:
    prompt = sum(estimate_prompt_tokens(m) for m in messages_list)
    out_max = len(messages_list) * (config.max_tokens or 512)
    typical, worst = config.cost(prompt, out_max / 2), config.cost(prompt, out_max)
    return CostEstimate(len(messages_list), prompt, out_max, typical, worst)


def usage_dict() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0}


@dataclass
class JudgeRequest:
    """One judge call. `key_material` decides the cache key; `validator` turns the reply into a verdict."""

    key_material: dict
    messages: list[dict]
    validator: object

    @property
    def key(self) -> str:
        return stable_hash(self.key_material)


@dataclass
class JudgeResult:
    parsed: dict | None
    error: str | None = None
    usage: dict = field(default_factory=usage_dict)
    cached: bool = False
    raw: str | None = None
