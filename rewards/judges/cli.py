"""`halign judge`: candidates.jsonl (+ prompts.jsonl) -> judgments.jsonl + manifest.json.

Only the flags given on the command line are passed to the judge, so each judge keeps its own defaults and an
option a judge does not take (say --base-url for the offline grounding judge) is an error that names it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, read_records, write_jsonl, write_manifest
from halign.rewards.judges.caption import failed_judgment
from halign.rewards.judges.registry import JUDGES, accepted_options, build_judge, judge_class

# flag dest -> judge constructor option
FLAG_OPTIONS = {"base_url": "base_url", "model": "model", "concurrency": "concurrency", "cache": "cache_dir",
                "timeout": "timeout", "max_retries": "max_retries", "max_reasks": "max_reasks",
                "api_key_env": "api_key_env", "price_in": "price_in", "price_out": "price_out",
                "vocabulary": "vocabulary", "hallucination_weight": "hallucination_weight"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", default="caption",
                        help=f"built-in judge ({', '.join(JUDGES)}) or a dotted path my_pkg.module.MyJudge")
    parser.add_argument("--input", required=True, help="candidates.jsonl from `halign sample`")
    parser.add_argument("--output", required=True, help="judgments.jsonl to write (manifest.json goes next to it)")
    parser.add_argument("--prompts", help="prompts file (default: prompts.jsonl next to --input)")
    llm = parser.add_argument_group("LLM judges (OpenAI-compatible endpoint: OpenAI, vLLM, Ollama)")
    llm.add_argument("--base-url", help="e.g. http://localhost:8000/v1 for a local vLLM server")
    llm.add_argument("--model", help="judge model name as the endpoint knows it")
    llm.add_argument("--concurrency", type=int, help="requests in flight at once")
    llm.add_argument("--cache", help="on-disk cache folder (default: judge_cache/ next to --output)")
    llm.add_argument("--timeout", type=float, help="seconds per request")
    llm.add_argument("--max-retries", type=int, help="retries on 429, 5xx, timeouts and connection errors")
    llm.add_argument("--max-reasks", type=int, help="re-asks when the output is malformed or off-schema")
    llm.add_argument("--api-key-env", help="environment variable holding the API key (default OPENAI_API_KEY)")
    llm.add_argument("--price-in", type=float, help="$ per 1M input tokens (for the cost report)")
    llm.add_argument("--price-out", type=float, help="$ per 1M output tokens (for the cost report)")
    offline = parser.add_argument_group("grounding judge (offline: mentions vs ground-truth objects)")
    offline.add_argument("--vocabulary", help="'toy' (the toy world's objects) or a JSON file {category: [words]}")
    offline.add_argument("--hallucination-weight", type=float, help="score = covered - weight * hallucinated")
    parser.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other judge option, value read as JSON when it parses "
                             "(e.g. splitter=objects, verifier=image, labeler=CKPT, judges='[...]')")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _output_path(output: str) -> Path:
    path = Path(output)
    return path / "judgments.jsonl" if path.is_dir() or not path.suffix else path


def _load_inputs(input_path, prompts_arg) -> tuple[Path, list[dict], Path, dict[str, dict]]:
    cand_path = Path(input_path)
    candidates = read_records(cand_path)
    seen: set = set()
    for i, cand in enumerate(candidates):
        if "id" not in cand or "prompt_id" not in cand:
            raise ValueError(f"{cand_path}: record {i + 1} lacks 'id' or 'prompt_id'")
        if cand["id"] in seen:
            raise ValueError(f"{cand_path}: candidate id {cand['id']!r} appears twice")
        seen.add(cand["id"])
    prompts_path = Path(prompts_arg) if prompts_arg else cand_path.parent / "prompts.jsonl"
    if not prompts_path.exists():
        raise FileNotFoundError(f"prompts file not found: {prompts_path} (the sampling stage writes it next to "
                                f"candidates.jsonl; pass --prompts PATH otherwise)")
    prompts = {}
    for rec in read_records(prompts_path):
        if "id" not in rec:
            raise ValueError(f"{prompts_path}: a prompt record lacks 'id'")
        prompts[rec["id"]] = rec
    return cand_path, candidates, prompts_path, prompts


def _options(judge_spec: str, options: dict, progress: bool, out_dir: Path) -> dict:
    accepted = accepted_options(judge_class(judge_spec))
    options = dict(options)
    if not progress and (accepted is None or "progress" in accepted):
        options["progress"] = False
    # Judges with a cache get one next to the output by default, so re-running the same command resumes.
    if "cache_dir" not in options and accepted is not None and "cache_dir" in accepted:
        options["cache_dir"] = str(out_dir / "judge_cache")
    return options


def run(args) -> tuple[Path, list[dict], dict]:
    """The CLI entry: only flags actually given become judge options."""
    from halign.data_gen.gen_pairs import parse_option

    options = {opt: getattr(args, flag) for flag, opt in FLAG_OPTIONS.items() if getattr(args, flag) is not None}
    options.update(parse_option(text) for text in args.judge_option)
    return run_judge(args.judge, args.input, args.output, args.prompts, options, progress=not args.no_progress)


def run_judge(judge_spec: str, input_path, output, prompts_path=None, options: dict | None = None,
              progress: bool = True) -> tuple[Path, list[dict], dict]:
    """Judge every candidate; returns (judgments path, judgments, manifest extra)."""
    started = time.time()
    out_path = _output_path(output)
    out_dir = ensure_writable_dir(out_path.parent)
    cand_path, candidates, prompts_path, prompts = _load_inputs(input_path, prompts_path)
    options = _options(judge_spec, options or {}, progress, out_dir)
    judge = build_judge(judge_spec, **options)

    # Candidates whose prompt is unknown become failed judgments here, whatever the judge does with them.
    known = [c for c in candidates if c["prompt_id"] in prompts]
    judged = iter(judge.judge(known, prompts) if known else [])
    judgments = []
    for cand in candidates:
        if cand["prompt_id"] in prompts:
            rec = next(judged, None)
            if rec is None or rec.get("candidate_id") != cand["id"]:
                raise ValueError(f"judge {judge_spec!r} must return one judgment per candidate, in order")
            judgments.append(rec)
        else:
            judgments.append(failed_judgment(cand, getattr(judge, "name", judge_spec),
                                             f"prompt_id {cand['prompt_id']!r} not found in {prompts_path}"))
    write_jsonl(out_path, judgments)

    stats = getattr(judge, "stats", None)
    describe = getattr(judge, "manifest_info", None) or getattr(judge, "config", None)
    info = describe() if callable(describe) else dict(options)
    counts = {"candidates": len(candidates), "judged": sum(j.get("score") is not None for j in judgments),
              "failed": sum(j.get("score") is None for j in judgments),
              "unknown_prompt": len(candidates) - len(known),
              "cache_hits": sum(bool(j.get("cached")) for j in judgments)}
    extra = {"counts": counts, "stats": stats.to_manifest() if stats is not None else None,
             "template": {"name": info.get("template"), "sha256": info.get("template_sha256")}}
    config = {"judge": judge_spec, "judge_name": getattr(judge, "name", judge_spec), "output": str(out_path),
              "options": info}
    write_manifest(out_dir, "judge", config, inputs={"candidates": cand_path, "prompts": prompts_path},
                   started=started, extra=extra)
    return out_path, judgments, extra


def print_summary(out_path: Path, extra: dict, name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    counts, stats = extra["counts"], extra["stats"]
    # One row per figure: reads the same in a narrow terminal and in a CI log.
    table = Table(title=f"halign judge: {name}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("candidates", counts["candidates"]), ("judged", counts["judged"]), ("failed", counts["failed"]),
            ("unknown prompt", counts["unknown_prompt"]), ("cache hits", counts["cache_hits"])]
    if stats:
        cost = stats["cost_usd"]
        rows += [("HTTP calls", stats["calls"]), ("retries", stats["retries"]), ("re-asks", stats["reasks"]),
                 ("prompt tokens", stats["usage"]["prompt"]), ("completion tokens", stats["usage"]["completion"]),
                 ("cost $", "unknown (no price for this model)" if cost is None else f"{cost:.4f}"),
                 ("calls/s", f"{stats['calls'] / max(stats['wall_seconds'], 1e-9):.1f}"),
                 ("wall s", f"{stats['wall_seconds']:.1f}")]
    for label, value in rows:
        table.add_row(label, str(value))
    console = Console(soft_wrap=True)
    console.print(table)
    if counts["failed"]:
        retried = counts["failed"] - counts["unknown_prompt"]
        console.print(f"{counts['failed']} candidate(s) failed: score null, reason in 'error'"
                      + (f"; re-running the same command asks again for those {retried} only"
                         if stats and retried else ""))
    console.print(f"wrote {out_path} and {out_path.parent / 'manifest.json'}")


def main(args) -> int:
    out_path, _, extra = run(args)
    print_summary(out_path, extra, args.judge)
    return 0
