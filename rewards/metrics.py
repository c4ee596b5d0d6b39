"""Built-in hallucination metrics by name, beside the judge registry (rewards/judges/registry.py).

One entry per metric says everything the tools around it need, so that none of them keeps its own list or
guesses from a report's keys:
  - how it is scored: the dotted path of a factory that returns a `Metric` (rewards/base.py); stored as a
    string so that reading the registry imports no scorer (CHAIR loads a lemmatizer, MMHal a client);
  - the `benchmark` value its reports carry (older reports already carry it, so it identifies them too);
  - its summary metrics, in the order tables show them, each with the direction that is better;
  - the kind of its per-item records (ITEM_KINDS): which fields hold the object counts that
    `halign compare` recomputes its paired statistics from, or that there are none;
  - where it runs: a recipe's eval section, `halign eval --bench`, `halign score`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from halign.rewards.base import Metric, load_object

LOWER, HIGHER, NEITHER = "lower", "higher", "neither"  # which value of a summary metric is better

# Per-item record kinds. The two object kinds hold the same counts under different field names.
OBJECTS = "objects"  # rewards/object_hallucination.score_item: mentions, hallucinated, covered, n_words
CHAIR_OBJECTS = "chair_objects"  # rewards/chair.score_chair: mapped_objects, hallucinated_objects, len
YES_NO = "yes_no"  # one yes/no answer per item: prediction, label (POPE)
AMBER_ITEMS = "amber"  # generative items (nouns, hallucinated) mixed with yes/no items (truth, answer)
RATING = "rating"  # one 0-6 judge rating per item (MMHal)
ITEM_KINDS = (OBJECTS, CHAIR_OBJECTS, YES_NO, AMBER_ITEMS, RATING)
OBJECT_COUNT_KINDS = (OBJECTS, CHAIR_OBJECTS)

OBJECT_SUMMARY = {"chair_s": LOWER, "chair_i": LOWER, "recall": HIGHER, "mean_len": NEITHER}
YES_NO_SUMMARY = {"accuracy": HIGHER, "precision": HIGHER, "recall": HIGHER, "f1": HIGHER, "yes_ratio": NEITHER}


@dataclass(frozen=True)
class MetricSpec:
    name: str  # what recipes and CLIs call it
    benchmark: str  # the `benchmark` value of its reports
    factory: str  # dotted path of a callable(**options) -> Metric
    summary: dict[str, str]  # summary metric -> LOWER / HIGHER / NEITHER is better, in display order
    item_kind: str  # one of ITEM_KINDS
    description: str
    # Constructor options the caller fixes (which response fields hold the id and the text): not user options.
    fixed_options: dict = field(default_factory=dict)
    recipe_eval: bool = False  # a recipe's eval section can score it (its ground truth comes with the prompts)
    eval_bench: str | None = None  # its name for `halign eval --bench` (which generates the answers); None: not there
    score_cli: bool = False  # `halign score <name>` scores existing responses with it

    def direction(self, metric: str) -> str:
        return self.summary.get(metric, NEITHER)

    def options(self) -> set[str] | None:
        """Options a user may set (constructor keywords less the fixed ones); None when it takes **kwargs."""
        params = inspect.signature(load_object(self.factory, {})).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return None
        return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - set(self.fixed_options)

    def build(self, **options) -> Metric:
        metric = load_object(self.factory, {})(**self.fixed_options, **options)
        if not isinstance(metric, Metric):
            raise ValueError(f"{self.factory} did not build a Metric (it needs a `name` and a `score` method)")
        return metric


def toy_metric() -> Metric:
    """Object hallucination against the toy world's exact ground truth, with the toy world's vocabulary."""
    from halign.rewards.object_hallucination import ObjectHallucinationMetric
    from halign.rewards.vocabulary import load_vocabulary

    return ObjectHallucinationMetric(load_vocabulary("toy"))


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec("toy", "object_chair", "halign.rewards.metrics.toy_metric", OBJECT_SUMMARY, OBJECTS,
               "CHAIR-style object hallucination on held-out toy scenes (exact ground truth)",
               recipe_eval=True, eval_bench="toy"),
    MetricSpec("toy_pope", "toy_pope", "halign.rewards.toy_pope.ToyPopeMetric", YES_NO_SUMMARY, YES_NO,
               "POPE's yes/no existence questions on held-out toy scenes, per kind", eval_bench="pope"),
    MetricSpec("toy_video", "toy_video_chair", "halign.rewards.toy_video_metrics.ToyVideoChairMetric",
               OBJECT_SUMMARY, OBJECTS,
               "CHAIR-style object hallucination over held-out moving-toy-world clips (objects vs the clip's tracks)",
               recipe_eval=True),
    MetricSpec("toy_video_qa", "toy_video_qa", "halign.rewards.toy_video_metrics.ToyVideoQAMetric",
               {"accuracy": HIGHER, "yes_ratio": NEITHER, "order_accuracy": HIGHER, "order_absent_accuracy": HIGHER,
                "still_there_accuracy": HIGHER, "exists_accuracy": HIGHER, "exists_partner_accuracy": HIGHER}, YES_NO,
               "temporal and existence questions on held-out toy clips: accuracy and yes-ratio per kind"),
    MetricSpec("chair", "chair", "halign.rewards.chair.ChairMetric", OBJECT_SUMMARY, CHAIR_OBJECTS,
               "CHAIR_s / CHAIR_i / recall on COCO-style captions", fixed_options={"id_key": "id", "caption_key": "text"},
               recipe_eval=True, eval_bench="chair", score_cli=True),
    MetricSpec("pope", "pope", "halign.rewards.pope.PopeMetric", YES_NO_SUMMARY, YES_NO,
               "POPE accuracy / precision / recall / F1 / yes-ratio per split", score_cli=True),
    MetricSpec("amber", "amber", "halign.rewards.amber.AmberMetric",
               {"chair": LOWER, "cover": HIGHER, "hal": LOWER, "cog": LOWER, "disc_accuracy": HIGHER,
                "disc_precision": HIGHER, "disc_recall": HIGHER, "disc_f1": HIGHER, "amber_score": HIGHER},
               AMBER_ITEMS, "AMBER generative (CHAIR, Cover, Hal, Cog) + discriminative + score",
               fixed_options={"id_key": "id", "response_key": "text"}, eval_bench="amber", score_cli=True),
    MetricSpec("mmhal", "mmhal", "halign.rewards.mmhal.MMHalMetric",
               {"average_score": HIGHER, "hallucination_rate": LOWER, "informativeness": HIGHER}, RATING,
               "MMHal-Bench-style 0-6 LLM-judge ratings: score, hallucination rate", score_cli=True),
)}


def metric_spec(name: str) -> MetricSpec:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; built-ins are {sorted(METRICS)}") from None


def spec_for_benchmark(benchmark: str) -> MetricSpec | None:
    """The entry whose reports carry this `benchmark` value; None for a metric from outside the registry."""
    return next((spec for spec in METRICS.values() if spec.benchmark == benchmark), None)


def recipe_benchmarks() -> tuple[str, ...]:
    return tuple(name for name, spec in METRICS.items() if spec.recipe_eval)


def eval_benches() -> dict[str, MetricSpec]:
    """`halign eval --bench` name -> entry."""
    return {spec.eval_bench: spec for spec in METRICS.values() if spec.eval_bench}


def score_cli_metrics() -> tuple[str, ...]:
    return tuple(name for name, spec in METRICS.items() if spec.score_cli)


def describe_report(report: dict) -> dict:
    """The report with `item_kind` recorded from its entry (by its `benchmark`), so that readers of the
    report (compare, stats, the HTML report) never guess the per-item format from the keys."""
    spec = spec_for_benchmark(report.get("benchmark", ""))
    if spec is not None:
        report["item_kind"] = spec.item_kind
    return report
