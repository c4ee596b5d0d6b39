"""A local OpenAI-compatible judge server for tests and benchmarks (loopback only, no model).

POST /v1/chat/completions answers like the caption judge would, deterministically: the "hallucinated" words
are the content words of the response that are not in the caption. Faults can be injected per item and per
call through a schedule, and the server counts calls per item (an item is the judged response text).

    with FakeJudgeServer(latency=0.01, schedule={"a red cube": ["429", None]}) as server:
        ... base_url=server.url ...
        assert server.calls["a red cube"] == 2

Like a paid API it can also admit only `rate_limit` requests/s (token bucket; 429 + Retry-After beyond, with
`x-ratelimit-*` headers), answer every request `429 insufficient_quota` (`quota_exhausted`), or hang
("hang" fault: `hang_seconds`). `valid_replies` counts the well-formed verdicts sold per item, so a test can
tell how many were bought twice.

Run standalone (for a benchmark in another process): `python tests/fake_judge_server.py --latency 0.2`
prints `PORT <n>`; GET /stats returns the counts as JSON. `--fault-fraction`, `--hang-fraction` and
`--rate-limit` set up the scattered-fault, hang and rate-limit scenarios.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import ipaddress
import json
import re
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from fake_batch_api import BatchAPI

FAULTS = ("429", "500", "slow", "truncated", "wrong_schema", "fenced", "disconnect", "401_echo", "400_echo", "hang")


def scattered(fraction: float, faults: tuple[str, ...], first_only: bool = False, seed: int = 0):
    """A schedule: each call of each item gets one of `faults` with probability `fraction`, decided by a hash
    of (seed, item, call number), so two runs of a scenario see the same faults."""

    def schedule(item: str, n: int) -> str | None:
        if first_only and n:
            return None
        h = int.from_bytes(hashlib.sha256(f"{seed}|{item}|{n}".encode()).digest()[:8], "big") / 2 ** 64
        return faults[int(h / fraction * len(faults)) % len(faults)] if h < fraction else None

    return schedule
STOPWORDS = set("a an the is are was were there this that of in on at to and or with it its has have i see "
                "image picture shows show".split())


def words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if w not in STOPWORDS]


def verdict_for(caption: str, response: str) -> dict:
    """The judge's answer: deterministic, so tests can compute it by hand."""
    known = set(words(caption))
    content = words(response)
    hallucinated = sorted({w for w in content if w not in known})
    bad = sum(w not in known for w in content)
    score = round(10 * (1 - bad / len(content)), 3) if content else 10.0
    return {"score": score, "hallucinated": hallucinated,
            "rationale": f"{bad} of {len(content)} content words are not supported by the caption"}


def _tag(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>\n?(.*?)\n?</{tag}>", text, flags=re.S)
    return match.group(1) if match else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real server: the client reuses its connections
    timeout = 10  # idle keep-alive connections do not pin a thread forever
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms on Linux), which alone made every call ~25% slower than the configured latency.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, *args) -> None:  # quiet: tests capture output
        pass

    def _send(self, status: int, body: dict | str, headers: dict | None = None) -> None:
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); that is the point of the "slow" fault

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/stats", "/v1/stats"):
            self._send(200, self.server.owner.snapshot())
        elif not self.server.owner.batch_api.route(self, "GET", self.path, b""):
            self._send(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if not self.path.endswith("/chat/completions") and self.server.owner.batch_api.route(self, "POST", self.path,
                                                                                             body):
            return
        try:
            request = json.loads(body or b"{}")
        except json.JSONDecodeError:
            return self._send(400, {"error": {"message": "bad json"}})
        if not self.path.endswith("/chat/completions"):
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        self.server.owner.handle(self, request)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that hangs up (a cut request, a killed run) is part of every scenario: no traceback
    request_queue_size = 512  # a burst of 64+ simultaneous connects must not overflow the listen backlog
    owner: "FakeJudgeServer"


class FakeJudgeServer:
    def __init__(self, latency: float = 0.0, schedule: dict[str, list] | Callable[[str, int], str | None] | None = None,
                 retry_after: float = 0.1, slow_seconds: float = 2.0, host: str = "127.0.0.1", port: int = 0,
                 rate_limit: float | None = None, limit_retry_after: float = 1.0, quota_exhausted: bool = False,
                 hang_seconds: float = 300.0, batch_seconds: float = 0.2):
        if not (host == "localhost" or ipaddress.ip_address(host).is_loopback):
            raise ValueError("the fake judge server only binds to loopback")
        self.latency, self.schedule = latency, schedule or {}
        self.retry_after, self.slow_seconds = retry_after, slow_seconds
        self.host, self.port = host, port
        self.calls: collections.Counter = collections.Counter()  # item -> calls received
        self.log: list[tuple[str, str | None]] = []  # (item, fault) in arrival order
        self.auth_seen: set[str] = set()
        self.last_messages: dict[str, list] = {}
        self.in_flight = self.max_in_flight = 0
        self.rate_limit, self.limit_retry_after = rate_limit, limit_retry_after
        self.quota_exhausted, self.hang_seconds = quota_exhausted, hang_seconds
        self._bucket, self._bucket_at = float(rate_limit or 0), time.monotonic()
        self.limited = 0  # 429s sent by the rate limiter
        self.valid_replies: collections.Counter = collections.Counter()  # item -> well-formed verdicts sold
        self._lock = threading.Lock()
        self.batch_api = BatchAPI(self, batch_seconds)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "FakeJudgeServer":
        self._httpd = _Server((self.host, self.port), _Handler)
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> "FakeJudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": sum(self.calls.values()), "calls": dict(self.calls),
                    "max_in_flight": self.max_in_flight, "limited": self.limited,
                    "valid_replies": dict(self.valid_replies)}

    def _admit(self) -> bool:
        """Token bucket of `rate_limit` requests/s, holding at most one second's worth (caller holds the lock)."""
        if not self.rate_limit:
            return True
        now = time.monotonic()
        self._bucket = min(self.rate_limit, self._bucket + (now - self._bucket_at) * self.rate_limit)
        self._bucket_at = now
        if self._bucket >= 1:
            self._bucket -= 1
            return True
        self.limited += 1
        return False

    # -- one request

    def _fault(self, item: str, n: int) -> str | None:
        if callable(self.schedule):
            return self.schedule(item, n)
        plan = self.schedule.get(item, [])
        return plan[n] if n < len(plan) else None

    def handle(self, h: _Handler, request: dict, batch: bool = False) -> None:
        messages = request.get("messages") or []
        first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        caption = _tag(first_user, "caption") or ""
        response = _tag(first_user, "response")
        pair = (_tag(first_user, "response_a"), _tag(first_user, "response_b"))
        item = response if response is not None else f"{pair[0]} ||| {pair[1]}"
        with self._lock:
            n = self.calls[item]
            self.calls[item] += 1
            fault = self._fault(item, n)
            if batch and fault not in ("truncated", "wrong_schema", "fenced", "500"):
                fault = None  # a batch line has no connection to hang or drop, and no rate limit
            elif self.quota_exhausted:
                fault = "quota"
            elif not self._admit():
                fault = "rate_limited"
            self.log.append((item, fault))
            self.auth_seen.add(h.headers.get("Authorization", ""))
            self.last_messages[item] = messages
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency)
            self._answer(h, request, fault, caption, response, pair)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, h: _Handler, request: dict, fault, caption, response, pair) -> None:
        if fault == "quota":
            return h._send(429, {"error": {"message": "You exceeded your current quota, please check your plan and "
                                                      "billing details.", "type": "insufficient_quota",
                                           "code": "insufficient_quota"}})
        if fault == "rate_limited":
            return h._send(429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                           "code": "rate_limit_exceeded"}},
                           {"Retry-After": f"{self.limit_retry_after:g}",
                            "x-ratelimit-limit-requests": f"{int(self.rate_limit * 60)}",
                            "x-ratelimit-remaining-requests": "0",
                            "x-ratelimit-reset-requests": f"{1 / self.rate_limit:.3f}s"})
        if fault == "hang":
            time.sleep(self.hang_seconds)
        if fault == "429":
            return h._send(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                           {"Retry-After": f"{self.retry_after:g}"})
        if fault == "500":
            return h._send(500, {"error": {"message": "internal error", "type": "server_error"}})
        if fault in ("401_echo", "400_echo"):
            key = h.headers.get("Authorization", "").removeprefix("Bearer ")
            status = int(fault[:3])
            return h._send(status, {"error": {"message": f"Incorrect API key provided: {key}", "type": "x"}})
        if fault == "disconnect":
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "slow":
            time.sleep(self.slow_seconds)
        if response is not None:
            verdict = verdict_for(caption, response)
        else:
            va, vb = verdict_for(caption, pair[0] or ""), verdict_for(caption, pair[1] or "")
            verdict = {"score_a": va["score"], "score_b": vb["score"], "hallucinated_a": va["hallucinated"],
                       "hallucinated_b": vb["hallucinated"], "preferred": "A" if va["score"] >= vb["score"] else "B",
                       "rationale": "compared content words with the caption"}
        content = json.dumps(verdict)
        if fault == "truncated":
            content = content[: len(content) // 2]
        elif fault == "wrong_schema":
            content = json.dumps({"score": "high", "verdict": "ok"})
        elif fault == "fenced":
            content = f"```json\n{content}\n```"
        if fault in (None, "fenced", "slow", "hang"):
            with self._lock:
                self.valid_replies[response if response is not None else f"{pair[0]} ||| {pair[1]}"] += 1
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages") or [])
        h._send(200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(content) // 4,
                      "total_tokens": prompt_chars // 4 + len(content) // 4}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=float, help="requests/s admitted; 429 + Retry-After beyond")
    parser.add_argument("--quota-exhausted", action="store_true", help="answer every request 429 insufficient_quota")
    parser.add_argument("--hang-fraction", type=float, default=0.0, help="share of first attempts that hang")
    parser.add_argument("--hang-seconds", type=float, default=300.0)
    parser.add_argument("--fault-fraction", type=float, default=0.0,
                        help="share of calls with a scattered fault (429, 500, slow, truncated, wrong_schema)")
    parser.add_argument("--slow-seconds", type=float, default=2.0)
    args = parser.parse_args()
    schedule = None
    if args.hang_fraction:
        schedule = scattered(args.hang_fraction, ("hang",), first_only=True)
    elif args.fault_fraction:
        schedule = scattered(args.fault_fraction, ("429", "500", "slow", "truncated", "wrong_schema"))
    server = FakeJudgeServer(latency=args.latency, port=args.port, rate_limit=args.rate_limit,
                             quota_exhausted=args.quota_exhausted, hang_seconds=args.hang_seconds,
                             slow_seconds=args.slow_seconds, schedule=schedule).start()
    print(f"PORT {server.port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()
