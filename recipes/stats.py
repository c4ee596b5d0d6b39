"""Paired statistics for before/after hallucination reports: pure functions over per-item counts.

The object-hallucination metrics are aggregates over items, and two of them are ratios of sums
(CHAIR_i = hallucinated mentions / mentions, recall = covered / ground-truth objects). A mean of per-item
ratios would weight a one-mention answer like a ten-mention one, so every resample here recomputes the
aggregate from per-item *counts*, exactly as `rewards.object_hallucination.aggregate` does.

Which fields of a per-item record hold the counts depends on its kind (rewards/metrics.py), which a report
records as `item_kind`; only reports written before that are read by guessing the kind from the keys.

- Confidence interval: paired percentile bootstrap. Item ids are resampled with replacement (the same
  draw for both reports, because they scored the same items), the metric of each report is recomputed
  on the resample, and the 2.5% / 97.5% quantiles of the difference (B - A) are the 95% interval.
- p-value: paired permutation (sign-flip) test. Under H0 "both models are exchangeable on every item",
  swapping the two reports' counts of an item leaves the distribution of the difference unchanged; the
  two-sided p-value is the share of swap patterns whose |difference| is at least the observed one. With
  up to `EXACT_MAX_ITEMS` items all 2^n patterns are enumerated (exact); above that, random patterns are
  drawn and p = (1 + hits) / (1 + draws), which never reports an impossible p = 0.
"""

from __future__ import annotations

import itertools

import numpy as np

from halign.rewards.metrics import CHAIR_OBJECTS, OBJECTS

# Per-item count columns (one row per item).
COLUMNS = ("any_hallucinated", "hallucinated", "mentions", "covered", "ground_truth", "words")
# metric -> (numerator column, denominator column or None for "divide by the number of items")
METRICS = {
    "chair_s": ("any_hallucinated", None),
    "chair_i": ("hallucinated", "mentions"),
    "recall": ("covered", "ground_truth"),
    "mean_len": ("words", None),
}
EXACT_MAX_ITEMS = 12


def guess_item_kind(item: dict) -> str:
    """The per-item kind of a record from a report written before reports recorded `item_kind`."""
    if "mentions" in item:
        return OBJECTS
    if "mapped_objects" in item:
        return CHAIR_OBJECTS
    raise ValueError(f"item {item.get('id')!r}: no per-item object counts (mentions / mapped_objects)")


def report_item_kind(report: dict) -> str | None:
    """The kind the report records (rewards/metrics.py); None for an older report (its items are guessed)."""
    return report.get("item_kind")


def object_fields(item: dict, kind: str | None = None) -> dict:
    """The object lists of one per-item record under one set of names: mentions, hallucinated, covered,
    ground_truth (lists) and words (a count). `kind` None: guessed from the record's keys."""
    kind = kind or guess_item_kind(item)
    if kind == OBJECTS:  # rewards/object_hallucination.py
        return {"mentions": item["mentions"], "hallucinated": item["hallucinated"], "covered": list(item["covered"]),
                "ground_truth": item["ground_truth"], "words": item["n_words"]}
    if kind == CHAIR_OBJECTS:  # rewards/chair.py
        mentions = item["mapped_objects"]
        return {"mentions": mentions, "hallucinated": item["hallucinated_objects"],
                "covered": sorted(set(mentions) & set(item["ground_truth"])), "ground_truth": item["ground_truth"],
                "words": item["len"]}
    raise ValueError(f"item {item.get('id')!r}: {kind!r} records have no per-item object counts")


def item_counts(item: dict, kind: str | None = None) -> tuple[int, ...]:
    """Counts of one per-item record, in COLUMNS order; `kind` as in `object_fields`."""
    f = object_fields(item, kind)
    return (int(bool(f["hallucinated"])), len(f["hallucinated"]), len(f["mentions"]), len(f["covered"]),
            len(f["ground_truth"]), f["words"])


def count_matrix(per_item: list[dict], ids: list[str], kind: str | None = None) -> np.ndarray:
    """(len(ids), len(COLUMNS)) array of counts, rows in the order of `ids`."""
    by_id = {str(it["id"]): it for it in per_item}
    return np.array([item_counts(by_id[i], kind) for i in ids], dtype=float).reshape(len(ids), len(COLUMNS))


def metric_from_sums(sums: np.ndarray, n_items: int, metric: str) -> np.ndarray:
    """The aggregate metric from column sums (..., len(COLUMNS)) over `n_items` items.

    A zero denominator gives 0.0, as `aggregate` does (no mentions -> CHAIR_i 0).
    """
    num_col, den_col = METRICS[metric]
    num = sums[..., COLUMNS.index(num_col)]
    den = sums[..., COLUMNS.index(den_col)] if den_col else np.full_like(num, n_items)
    return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def metric_value(counts: np.ndarray, metric: str) -> float:
    return float(metric_from_sums(counts.sum(axis=0), counts.shape[0], metric))


def bootstrap_diff_ci(a: np.ndarray, b: np.ndarray, metric: str, n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Paired percentile bootstrap interval of metric(b) - metric(a); rows of a and b are the same items."""
    n = a.shape[0]
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    diffs = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large benchmarks
    for s in range(0, n_boot, chunk):
        rows = idx[s : s + chunk]
        diffs[s : s + chunk] = (metric_from_sums(b[rows].sum(axis=1), n, metric)
                                - metric_from_sums(a[rows].sum(axis=1), n, metric))
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(low), float(high)


def permutation_p_value(a: np.ndarray, b: np.ndarray, metric: str, n_perm: int = 2000, seed: int = 0) -> float:
    """Two-sided paired permutation (item swap) test of metric(b) == metric(a)."""
    n = a.shape[0]
    if n == 0:
        return float("nan")
    observed = abs(metric_value(b, metric) - metric_value(a, metric))
    if n <= EXACT_MAX_ITEMS:
        swaps = np.array(list(itertools.product((0.0, 1.0), repeat=n)))
        exact = True
    else:
        swaps = (np.random.default_rng(seed).random((n_perm, n)) < 0.5).astype(float)
        exact = False
    # Swapping item i moves (b_i - a_i) from B's sums to A's: sums follow from one matrix product.
    delta = swaps @ (b - a)
    sums_a, sums_b = a.sum(axis=0) + delta, b.sum(axis=0) - delta
    diffs = np.abs(metric_from_sums(sums_b, n, metric) - metric_from_sums(sums_a, n, metric))
    # A tolerance so that float noise in equal sums does not decide ties.
    hits = int((diffs >= observed - 1e-12).sum())
    return hits / len(swaps) if exact else (1 + hits) / (1 + len(swaps))


def compare_metric(a: np.ndarray, b: np.ndarray, metric: str, n_boot: int = 2000, seed: int = 0) -> dict:
    """Values, absolute and relative change, bootstrap CI and permutation p-value for one metric."""
    value_a, value_b = metric_value(a, metric), metric_value(b, metric)
    low, high = bootstrap_diff_ci(a, b, metric, n_boot, seed)
    return {
        "metric": metric, "a": value_a, "b": value_b, "diff": value_b - value_a,
        "rel": (value_b - value_a) / value_a if value_a else None,
        "ci_low": low, "ci_high": high, "p": permutation_p_value(a, b, metric, n_boot, seed),
    }
