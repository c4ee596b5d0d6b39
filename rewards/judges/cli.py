"""`halign judge`: candidates.jsonl (+ prompts.jsonl) -> judgments.jsonl + manifest.json.

Only the flags given on the command line are passed to the judge, so each judge keeps its own defaults and an
option a judge does not take (say --base-url for the offline grounding judge) is an error that names it.
Judgments are appended to the output as they complete (judgment_log.py); running the same command again
continues where a killed or stopped run left off.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from halign.data_gen.io import ensure_writable_dir, file_sha256, read_records, stable_hash, write_manifest
from halign.data_gen.overrides import parse_option
from halign.rewards.judges import progress as progress_module
from halign.rewards.judges.caption import failed_judgment
from halign.rewards.judges.disk_cache import FILE_MODE, default_cache_dir
from halign.rewards.judges.endpoint import FatalJudgeError, StopRun
from halign.rewards.judges.judgment_log import (JudgmentLog, answer_problem, duplicates, is_judged,
                                                remove_stale_temp_files)
from halign.rewards.judges.registry import JUDGES, accepted_options, build_judge, judge_class

MAX_FAILED = 0.05  # default --max-failed: more than 5% failed candidates is a failed run (exit status 1)
MAX_ANSWER_CHARS = 20_000  # default --max-answer-chars (~5k tokens): longer answers are cut before judging
# Manifest options that do not change a verdict: a rerun that differs only in these continues the output.
RUN_ONLY_OPTIONS = {"concurrency", "timeout", "max_retries", "max_reasks", "cache_dir", "rpm", "tpm", "budget_usd",
                    "price_per_1m", "batch", "api_key_env", "agreement"}

# flag dest -> judge constructor option
FLAG_OPTIONS = {"base_url": "base_url", "model": "model", "concurrency": "concurrency", "cache": "cache_dir",
                "timeout": "timeout", "max_retries": "max_retries", "max_reasks": "max_reasks",
                "api_key_env": "api_key_env", "price_in": "price_in", "price_out": "price_out",
                "rpm": "rpm", "tpm": "tpm", "budget": "budget", "batch": "batch", "batch_poll": "batch_poll",
                "vocabulary": "vocabulary", "hallucination_weight": "hallucination_weight"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", default="caption",
                        help=f"built-in judge ({', '.join(JUDGES)}) or a dotted path my_pkg.module.MyJudge")
    parser.add_argument("--input", required=True, help="candidates.jsonl from `halign sample`")
    parser.add_argument("--output", required=True, help="judgments.jsonl to write (manifest.json goes next to it)")
    parser.add_argument("--prompts", help="prompts file (default: prompts.jsonl next to --input)")
    parser.add_argument("--max-failed", type=float, default=MAX_FAILED,
                        help=f"exit with status 1 when more than this share of candidates failed (default {MAX_FAILED})")
    parser.add_argument("--max-answer-chars", type=int, default=MAX_ANSWER_CHARS,
                        help=f"cut longer answers to this many characters before judging, noted per row "
                             f"(default {MAX_ANSWER_CHARS}; 0 = never)")
    llm = parser.add_argument_group("LLM judges (OpenAI-compatible endpoint: OpenAI, vLLM, Ollama)")
    llm.add_argument("--base-url", help="e.g. http://localhost:8000/v1 for a local vLLM server")
    llm.add_argument("--model", help="judge model name as the endpoint knows it")
    llm.add_argument("--concurrency", type=int, help="most requests in flight at once")
    llm.add_argument("--cache", help="on-disk cache folder, shared by runs (default: $HALIGN_CACHE/judge, "
                                     "else ~/.cache/halign/judge)")
    llm.add_argument("--timeout", type=float, help="seconds per request at most (latency-derived deadlines cut "
                                                   "hung requests sooner)")
    llm.add_argument("--max-retries", type=int, help="retries on 5xx, timeouts and connection errors (429 rate "
                                                     "limits are retried without using these up)")
    llm.add_argument("--max-reasks", type=int, help="re-asks when the output is malformed or off-schema")
    llm.add_argument("--api-key-env", help="environment variable holding the key for --base-url (without it, "
                                           "OPENAI_API_KEY goes to the OpenAI host only and other hosts get no key)")
    llm.add_argument("--rpm", type=float, help="requests per minute at most")
    llm.add_argument("--tpm", type=float, help="tokens per minute at most (prompt estimate + max tokens)")
    llm.add_argument("--budget", type=float, help="$: stop before the output's total spend passes this; rerun "
                                                  "with a larger budget to continue")
    llm.add_argument("--batch", action="store_true", default=None,
                     help="submit through the OpenAI Batch API (half price on OpenAI, answers within 24 h); an "
                          "interrupted run resumes by polling the submitted batch")
    llm.add_argument("--batch-poll", type=float, help="seconds between two looks at a submitted batch (default 30)")
    llm.add_argument("--price-in", type=float, help="$ per 1M input tokens (estimate, spend, budget)")
    llm.add_argument("--price-out", type=float, help="$ per 1M output tokens (estimate, spend, budget)")
    offline = parser.add_argument_group("grounding judge (offline: mentions vs ground-truth objects)")
    offline.add_argument("--vocabulary", help="'toy' (the toy world's objects) or a JSON file {category: [words]}")
    offline.add_argument("--hallucination-weight", type=float, help="score = covered - weight * hallucinated")
    parser.add_argument("--judge-option", action="append", default=[], metavar="KEY=VALUE",
                        help="any other judge option; VALUE is YAML, as every override "
                             "(e.g. splitter=objects, verifier=image, labeler=CKPT, judges='[...]')")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    parser.add_argument("--progress-every", type=float, help="seconds between plain progress lines when stderr "
                                                             "is not a terminal (default 30)")


def _output_path(output: str) -> Path:
    path = Path(output)
    return path / "judgments.jsonl" if path.is_dir() or not path.suffix else path


def _load_inputs(input_path, prompts_arg) -> tuple[Path, list[dict], Path, dict[str, dict]]:
    cand_path = Path(input_path)
    candidates = read_records(cand_path)
    for i, cand in enumerate(candidates):
        if "id" not in cand or "prompt_id" not in cand:
            raise ValueError(f"{cand_path}: record {i + 1} lacks 'id' or 'prompt_id'")
    dup = duplicates(str(c["id"]) for c in candidates)
    if dup:
        raise ValueError(f"{cand_path}: candidate id(s) appear more than once: {dup[:5]}")
    prompts_path = Path(prompts_arg) if prompts_arg else cand_path.parent / "prompts.jsonl"
    if not prompts_path.exists():
        raise FileNotFoundError(f"prompts file not found: {prompts_path} (the sampling stage writes it next to "
                                f"candidates.jsonl; pass --prompts PATH otherwise)")
    records = read_records(prompts_path)
    for i, rec in enumerate(records):
        if "id" not in rec:
            raise ValueError(f"{prompts_path}: prompt record {i + 1} lacks 'id'")
    dup = duplicates(rec["id"] for rec in records)
    if dup:
        raise ValueError(f"{prompts_path}: prompt id(s) appear more than once, so it is unclear which caption "
                         f"applies: {dup[:5]}")
    return cand_path, candidates, prompts_path, {rec["id"]: rec for rec in records}


def _options(judge_spec: str, options: dict, progress: bool) -> dict:
    accepted = accepted_options(judge_class(judge_spec))
    options = dict(options)
    if not progress and (accepted is None or "progress" in accepted):
        options["progress"] = False
    # Judges with a cache share one folder by default: a new output folder does not pay for anything again.
    if "cache_dir" not in options and accepted is not None and "cache_dir" in accepted:
        options["cache_dir"] = str(default_cache_dir())
    return options


def run(args) -> tuple[Path, list[dict], dict]:
    """The CLI entry: only flags actually given become judge options."""
    if args.progress_every is not None:
        progress_module.PROGRESS_EVERY = args.progress_every
    options = {opt: getattr(args, flag) for flag, opt in FLAG_OPTIONS.items() if getattr(args, flag) is not None}
    options.update(parse_option(text) for text in args.judge_option)
    return run_judge(args.judge, args.input, args.output, args.prompts, options, progress=not args.no_progress,
                     max_answer_chars=args.max_answer_chars)


def _spent(rows, price) -> float | None:
    """$ the output's own (not cached) judgments cost, over every run that wrote them."""
    if price is None:
        return None
    prompt = sum((r.get("usage") or {}).get("prompt_tokens", 0) for r in rows if not r.get("cached"))
    completion = sum((r.get("usage") or {}).get("completion_tokens", 0) for r in rows if not r.get("cached"))
    return (prompt * price[0] + completion * price[1]) / 1e6


def _previous_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_judge(judge_spec: str, input_path, output, prompts_path=None, options: dict | None = None,
              progress: bool = True, max_answer_chars: int | None = MAX_ANSWER_CHARS) -> tuple[Path, list[dict], dict]:
    """Judge every candidate not judged yet in `output`; returns (judgments path, judgments, manifest extra)."""
    started = time.time()
    out_path = _output_path(output)
    out_dir = ensure_writable_dir(out_path.parent)
    cand_path, candidates, prompts_path, prompts = _load_inputs(input_path, prompts_path)
    options = _options(judge_spec, options or {}, progress)
    previous = _previous_manifest(out_dir)
    judge = build_judge(judge_spec, **options)
    name = getattr(judge, "name", judge_spec)
    resume_key = _resume_key(judge_spec, judge, options, cand_path, prompts_path, max_answer_chars)
    # Continue the output only when it was made from the same inputs with the same verdict-deciding settings;
    # otherwise (a recipe rerun after a config change, say) start it again, as a fresh run would.
    log = JudgmentLog(out_path, fresh=(previous or {}).get("resume_key") != resume_key)
    try:
        remove_stale_temp_files(out_dir, [out_path.name, "manifest.json"])
        ids = {str(c["id"]) for c in candidates}
        foreign = [cid for cid in log.rows if cid not in ids]
        if foreign:
            raise ValueError(f"{out_path} holds judgments for candidates not in {cand_path} (e.g. {foreign[0]!r}): "
                             f"it belongs to another input; give this run another --output")
        other = {r.get("judge") for r in log.rows.values()} - {name}
        if other:
            raise ValueError(f"{out_path} holds judgments by judge {sorted(other)}, not {name!r}; give this run "
                             f"another --output")
        config = getattr(judge, "config", None)
        price = config.price() if hasattr(config, "price") else None
        if options.get("budget") is not None:
            # The budget covers the output's total spend, earlier runs included, so a rerun continues to it.
            config.budget = options["budget"] - (_spent(log.rows.values(), price) or 0.0)
            if config.budget <= 0:
                raise StopRun(f"budget reached: earlier runs of {out_path} already spent ${options['budget']:.4f}; "
                              f"rerun with a larger --budget to continue")

        # Input problems fail here, whatever the judge would do with them; answers too long are cut.
        failed: dict[str, dict] = {}
        todo, notes = [], {}
        for cand in candidates:
            cid = str(cand["id"])
            if cid in log.rows:
                continue
            problem = (f"prompt_id {cand['prompt_id']!r} not found in {prompts_path}"
                       if cand["prompt_id"] not in prompts else answer_problem(cand))
            if problem:
                failed[cid] = failed_judgment(cand, name, problem)
                continue
            if max_answer_chars and len(cand["text"]) > max_answer_chars:
                notes[cid] = {"answer_truncated": {"chars": len(cand["text"]), "kept": max_answer_chars}}
                cand = {**cand, "text": cand["text"][:max_answer_chars]}
            todo.append(cand)

        def record(row: dict) -> None:
            row.update(notes.get(str(row.get("candidate_id")), {}))
            if is_judged(row):
                log.add(row)  # streamed: the file grows as judgments complete

        if hasattr(judge, "on_judgment"):
            judge.on_judgment = record
        _write_manifest(out_dir, out_path, judge_spec, judge, options, cand_path, prompts_path, started, log,
                        previous, status="running", resume_key=resume_key)
        stopped = None
        try:
            for row in judge.judge(todo, prompts) if todo else []:
                record(row)
                if not is_judged(row):
                    failed[str(row.get("candidate_id"))] = row
        except (FatalJudgeError, StopRun) as err:
            stopped = err
        if stopped is None:
            by_id = {str(c["id"]): c for c in candidates}
            for cid in (str(c["id"]) for c in candidates):
                if cid not in log.rows and cid in failed:
                    log.add(failed[cid])  # failed rows go last: the next run cuts them off and asks again
            missing = [cid for cid in by_id if cid not in log.rows and cid not in failed]
            if missing:
                raise ValueError(f"judge {judge_spec!r} returned no judgment for candidate(s) {missing[:5]}")
        log.close()
        judgments = [log.rows.get(str(c["id"])) or failed.get(str(c["id"])) for c in candidates]
        judgments = [j for j in judgments if j is not None]
        extra = _write_manifest(out_dir, out_path, judge_spec, judge, options, cand_path, prompts_path, started,
                                log, previous, status="stopped: " + str(stopped) if stopped else "done",
                                candidates=candidates, failed=failed, resume_key=resume_key)
        if stopped is not None:
            raise stopped
        return out_path, judgments, extra
    finally:
        log.close()


def _resume_key(judge_spec, judge, options, cand_path, prompts_path, max_answer_chars) -> str:
    describe = getattr(judge, "manifest_info", None) or getattr(judge, "config", None)
    info = describe() if callable(describe) else dict(options)
    return stable_hash({"judge": judge_spec, "options": {k: v for k, v in info.items() if k not in RUN_ONLY_OPTIONS},
                        "inputs": [file_sha256(cand_path), file_sha256(prompts_path)],
                        "max_answer_chars": max_answer_chars})


def _write_manifest(out_dir, out_path, judge_spec, judge, options, cand_path, prompts_path, started, log,
                    previous, status, candidates=(), failed=None, resume_key=None) -> dict:
    failed = failed or {}
    if (previous or {}).get("resume_key") != resume_key:
        previous = None  # another input or settings: its totals are not this output's
    stats = getattr(judge, "stats", None)
    describe = getattr(judge, "manifest_info", None) or getattr(judge, "config", None)
    info = describe() if callable(describe) else dict(options)
    sha, rows = log.digest()
    counts = {"candidates": len(candidates), "judged": sum(str(c["id"]) in log.rows for c in candidates),
              "failed": len(failed), "unknown_prompt": sum("not found" in (f.get("error") or "")
                                                           for f in failed.values()),
              "cache_hits": sum(bool(r.get("cached")) for r in log.rows.values()),
              "resumed": log.resumed}
    config = getattr(judge, "config", None)
    price = config.price() if hasattr(config, "price") else None
    before = (previous or {}).get("cumulative") or {}
    this = stats.to_manifest() if stats is not None else None
    cumulative = {"runs": int(before.get("runs", 0)) + 1,
                  "calls": int(before.get("calls", 0)) + (this["calls"] if this else 0),
                  "cost_usd": None if price is None else round(_spent(log.rows.values(), price), 6),
                  "note": "calls of runs killed before writing their manifest are not counted"}
    extra = {"status": status, "resume_key": resume_key, "counts": counts, "stats": this,
             "template": {"name": info.get("template"), "sha256": info.get("template_sha256")},
             "output": {"path": str(out_path), "sha256": sha, "rows": rows}}
    if status != "running":
        extra["cumulative"] = cumulative
    elif previous and previous.get("cumulative"):
        extra["cumulative"] = previous["cumulative"]  # carried over until this run ends
    run_config = {"judge": judge_spec, "judge_name": getattr(judge, "name", judge_spec), "output": str(out_path),
                  "options": info}
    path = write_manifest(out_dir, "judge", run_config, inputs={"candidates": cand_path, "prompts": prompts_path},
                          started=started, extra=extra)
    os.chmod(path, FILE_MODE)  # written through mkstemp (0600): give it the umask's mode like the output
    return extra


def print_summary(out_path: Path, extra: dict, name: str, max_failed: float = MAX_FAILED) -> bool:
    """The end-of-run table; returns False when more than `max_failed` of the candidates failed."""
    from rich.console import Console
    from rich.table import Table

    counts, stats = extra["counts"], extra["stats"]
    # One row per figure: reads the same in a narrow terminal and in a CI log.
    table = Table(title=f"halign judge: {name}", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [("candidates", counts["candidates"]), ("judged", counts["judged"]), ("failed", counts["failed"]),
            ("unknown prompt", counts["unknown_prompt"]), ("cache hits", counts["cache_hits"]),
            ("resumed from earlier runs", counts["resumed"])]
    if stats:
        cost = stats["cost_usd"]
        rows += [("HTTP calls", stats["calls"]), ("retries", stats["retries"]),
                 ("rate-limited (429)", stats["rate_limited"]), ("hung requests re-sent", stats["deadline_cuts"]),
                 ("re-asks", stats["reasks"]), ("cache entries rejected", stats["cache_rejected"]),
                 ("prompt tokens", stats["usage"]["prompt"]), ("completion tokens", stats["usage"]["completion"]),
                 ("cost $ (this run)", "unknown (no price for this model)" if cost is None else f"{cost:.4f}"),
                 ("calls/s", f"{stats['calls'] / max(stats['wall_seconds'], 1e-9):.1f}"),
                 ("wall s", f"{stats['wall_seconds']:.1f}")]
    total = (extra.get("cumulative") or {}).get("cost_usd")
    if total is not None:
        rows.append(("cost $ (output, all runs)", f"{total:.4f}"))
    for label, value in rows:
        table.add_row(label, str(value))
    console = Console(soft_wrap=True)
    console.print(table)
    share = counts["failed"] / max(counts["candidates"], 1)
    if counts["failed"]:
        console.print(f"{counts['failed']} candidate(s) failed: score null, reason in 'error'; re-running the "
                      f"same command asks again for the failed ones only")
    console.print(f"wrote {out_path} and {out_path.parent / 'manifest.json'}")
    if share > max_failed:
        print(f"halign judge: {counts['failed']} of {counts['candidates']} candidates failed ({share:.1%}), more "
              f"than --max-failed {max_failed:.1%}", file=sys.stderr)
        return False
    return True


def main(args) -> int:
    out_path, _, extra = run(args)
    return 0 if print_summary(out_path, extra, args.judge, args.max_failed) else 1
