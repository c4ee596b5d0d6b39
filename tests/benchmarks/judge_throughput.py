"""Judge throughput against the fake server (standalone; not collected by pytest).

    python tests/benchmarks/judge_throughput.py [--n 2000 --latency 0.2 --concurrency 64]

Targets: a cold run within 1.3x of the latency-bound limit (n * latency / concurrency) and a warm-cache rerun
that makes 0 calls in under 5 s. The server runs in its own process so that its threads do not compete with
the client for the GIL; exit status 1 when a target is missed.

It also reports the client's own CPU time per call (process time of this process, the server being another
one) and, with --profile, where that time goes (cProfile, top functions by own time): if the client's CPU per
call times the call rate nears one core, the client, not the endpoint, is what limits.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent


def server_stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as resp:
        return json.load(resp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-ratio", type=float, default=1.3)
    parser.add_argument("--max-warm-seconds", type=float, default=5.0)
    parser.add_argument("--profile", action="store_true", help="profile the cold run's client CPU time")
    args = parser.parse_args()

    import openai  # noqa: F401  (imported before the clock starts: ~0.5 s that is not judging)

    from halign.rewards.judges.caption import CaptionJudge

    server = subprocess.Popen([sys.executable, str(HERE.parent / "fake_judge_server.py"),
                               "--latency", str(args.latency)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        prompts = {"p": {"id": "p", "caption": "A red cube and a blue ball on a wooden table.",
                         "question": "Describe the image."}}
        candidates = [{"id": f"c{i}", "prompt_id": "p", "text": f"A red cube number {i} and a green cat."}
                      for i in range(args.n)]
        with tempfile.TemporaryDirectory() as cache:
            def run(profiler=None) -> tuple[float, list[dict], CaptionJudge]:
                judge = CaptionJudge(base_url=f"http://127.0.0.1:{port}/v1", model="fake",
                                     concurrency=args.concurrency, cache_dir=cache, timeout=30, progress=False)
                t0 = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                out = judge.judge(candidates, prompts)
                if profiler is not None:
                    profiler.disable()
                return time.perf_counter() - t0, out, judge

            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
            before = server_stats(port)["total"]
            cpu0 = time.process_time()
            cold_s, cold, judge = run(profiler)
            cold_cpu = time.process_time() - cpu0
            cold_calls = server_stats(port)
            cold_calls["total"] -= before
            warm_s, warm, warm_judge = run()
            warm_calls = server_stats(port)["total"] - cold_calls["total"] - before
    finally:
        server.terminate()
        server.wait(timeout=10)

    bound = args.n * args.latency / args.concurrency
    ratio = cold_s / bound
    failed = sum(j["score"] is None for j in cold) + sum(j["score"] is None for j in warm)
    same = [{k: v for k, v in j.items() if k != "cached"} for j in cold] == \
           [{k: v for k, v in j.items() if k != "cached"} for j in warm]
    print(f"cold: {args.n} judgments, {cold_calls['total']} calls in {cold_s:.2f} s "
          f"({cold_calls['total'] / cold_s:.0f} calls/s); latency bound {bound:.2f} s; ratio {ratio:.3f} "
          f"(target <= {args.max_ratio}); server max in flight {cold_calls['max_in_flight']}")
    per_call_ms = 1000 * cold_cpu / max(cold_calls["total"], 1)
    print(f"client CPU: {cold_cpu:.2f} s for {cold_calls['total']} calls = {per_call_ms:.2f} ms per call; at "
          f"{cold_calls['total'] / cold_s:.0f} calls/s that is {cold_cpu / cold_s:.0%} of one core")
    if profiler is not None:
        import pstats

        pstats.Stats(profiler).sort_stats("tottime").print_stats(12)
    print(f"warm: {warm_calls} calls, {warm_judge.stats.cache_hits} cache hits in {warm_s:.2f} s "
          f"(target 0 calls, < {args.max_warm_seconds:g} s); identical output: {same}; failed: {failed}")
    ok = (ratio <= args.max_ratio and warm_calls == 0 and warm_s < args.max_warm_seconds and failed == 0
          and same and cold_calls["total"] == args.n)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
