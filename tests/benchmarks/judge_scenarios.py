"""The judge against a server that behaves like a paid API: four scenarios, each one `halign judge` run (standalone;
not collected by pytest).

    python tests/benchmarks/judge_scenarios.py [--only a,b,c,d]

  (a) 1,000 items, the server admits 40 requests/s (429 + Retry-After: 1 beyond), --concurrency 64:
      target 0 failed, exit 0, wall <= 1.3 x the rate bound (25 s)
  (b) every request answered 429 insufficient_quota: target a non-zero exit after at most 10 calls
  (c) 2,000 items, 0.2 s latency, 3% of first attempts hang for 300 s, --concurrency 64: 0 failed, wall <= 30 s
  (d) 2,000 items, 30% scattered faults (429, 500, slow, truncated JSON, wrong schema), SIGKILL after ~40% of
      the calls, rerun: 2,000 rows, one per candidate, at most 64 valid replies bought twice

Each scenario runs the real CLI in a subprocess against tests/fake_judge_server.py in another process, with a
private cache. Wall times include the CLI's start-up (~1 s of imports). Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CAPTION = "A red cube and a blue ball on a wooden table."


class Server:
    def __init__(self, *flags: str):
        self.proc = subprocess.Popen([sys.executable, str(HERE.parent / "fake_judge_server.py"), *flags],
                                     stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline().split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as resp:
            return json.load(resp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def write_inputs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.jsonl").write_text(json.dumps({"id": "p", "caption": CAPTION,
                                                      "question": "Describe the image."}) + "\n")
    with open(folder / "candidates.jsonl", "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"id": f"c{i}", "prompt_id": "p", "text": f"A red cube number {i} and a green cat."})
                     + "\n")
    return folder / "candidates.jsonl"


def judge_cmd(server: Server, inp: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "halign.recipes.cli", "judge", "--input", str(inp), "--output", str(out),
            "--base-url", server.url, "--model", "fake", "--concurrency", "64", "--no-progress", *extra]


def run_cli(cmd: list[str], env: dict) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    return proc.returncode, time.perf_counter() - t0, proc.stderr


def manifest(out: Path) -> dict:
    return json.loads((out.parent / "manifest.json").read_text())


def scenario_a(tmp: Path, env: dict) -> bool:
    n, rate = 1000, 40.0
    with Server("--latency", "0.1", "--rate-limit", str(rate)) as server:
        inp, out = write_inputs(tmp / "a", n), tmp / "a" / "out" / "judgments.jsonl"
        rc, wall, err = run_cli(judge_cmd(server, inp, out), env)
        stats = server.stats()
    m = manifest(out)
    bound = n / rate
    print(f"(a) rate limit {rate:g}/s: exit {rc}, {m['counts']['judged']} judged, {m['counts']['failed']} failed, "
          f"{stats['total']} calls ({stats['limited']} answered 429), wall {wall:.1f} s vs rate bound {bound:.0f} s "
          f"= {wall / bound:.2f}x (target <= 1.3x)")
    return rc == 0 and m["counts"]["failed"] == 0 and wall <= 1.3 * bound


def scenario_b(tmp: Path, env: dict) -> bool:
    with Server("--quota-exhausted") as server:
        inp, out = write_inputs(tmp / "b", 200), tmp / "b" / "out" / "judgments.jsonl"
        rc, wall, err = run_cli(judge_cmd(server, inp, out), env)
        calls = server.stats()["total"]
    last = err.strip().splitlines()[-1] if err.strip() else ""
    print(f"(b) no quota: exit {rc} after {calls} call(s) in {wall:.1f} s (target non-zero, <= 10 calls); "
          f"said: {last[:160]}")
    return rc != 0 and calls <= 10


def scenario_c(tmp: Path, env: dict) -> bool:
    n = 2000
    with Server("--latency", "0.2", "--hang-fraction", "0.03", "--hang-seconds", "300") as server:
        inp, out = write_inputs(tmp / "c", n), tmp / "c" / "out" / "judgments.jsonl"
        rc, wall, err = run_cli(judge_cmd(server, inp, out), env)
        stats = server.stats()
    m = manifest(out)
    print(f"(c) 3% hangs: exit {rc}, {m['counts']['failed']} failed, {stats['total']} calls, "
          f"{m['stats']['deadline_cuts']} hung requests cut and re-sent, wall {wall:.1f} s (target <= 30 s; "
          f"latency bound {n * 0.2 / 64:.1f} s)")
    return rc == 0 and m["counts"]["failed"] == 0 and wall <= 30


def scenario_d(tmp: Path, env: dict) -> bool:
    n = 2000
    with Server("--latency", "0.05", "--fault-fraction", "0.3", "--slow-seconds", "1") as server:
        inp, out = write_inputs(tmp / "d", n), tmp / "d" / "out" / "judgments.jsonl"
        cmd = judge_cmd(server, inp, out, "--max-failed", "0.05")
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        target = int(0.4 * n * 1.45)  # ~1.45 calls per item with these faults: kill at ~40% of the calls
        while server.stats()["total"] < target and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = server.stats()
        rows_at_kill = sum(1 for line in out.read_text().splitlines() if line.strip())
        rc, wall, err = run_cli(cmd, env)
        stats = server.stats()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["candidate_id"] for r in rows]
    twice = sum(v >= 2 for v in stats["valid_replies"].values())
    leftovers = [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]
    failed = sum(r["score"] is None for r in rows)
    print(f"(d) 30% faults, SIGKILL at {at_kill['total']} calls ({rows_at_kill} rows on disk), rerun exit {rc}: "
          f"{len(rows)} rows, {len(set(ids))} distinct candidates, {failed} failed, {twice} valid replies bought "
          f"twice (target <= 64), {stats['total']} calls in all, temp files left: {len(leftovers)}")
    return len(rows) == n and len(set(ids)) == n and twice <= 64 and not leftovers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b,c,d")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HALIGN_CACHE": str(Path(tmp) / "cache"), "OPENAI_API_KEY": "sk-scenario-not-sent"}
        for name in args.only.split(","):
            results[name] = globals()[f"scenario_{name}"](Path(tmp), env)
    print("PASS" if all(results.values()) else f"FAIL: {[k for k, v in results.items() if not v]}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
