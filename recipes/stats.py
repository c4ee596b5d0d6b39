"""Paired statistics for before/after hallucination reports: pure functions over per-item counts.

The object-hallucination metrics are aggregates over items, and two of them are ratios of sums
(CHAIR_i = hallucinated mentions / mentions, recall = covered / ground-truth objects). A mean of per-item
ratios would weight a one-mention answer like a ten-mention one, so every resample here recomputes the
aggregate from per-item *counts*, exactly as `rewards.object_hallucination.aggregate` does.

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


def item_counts(item: dict) -> tuple[int, ...]:
    """Counts of one per-item record; reads the toy/object schema and the COCO CHAIR schema."""
    if "mentions" in item:  # rewards/object_hallucination.py
        hallucinated, mentions = item["hallucinated"], item["mentions"]
        covered, words = len(item["covered"]), item["n_words"]
    elif "mapped_objects" in item:  # rewards/chair.py
        hallucinated, mentions = item["hallucinated_objects"], item["mapped_objects"]
        covered, words = len(set(mentions) & set(item["ground_truth"])), item["len"]
    else:
        raise ValueError(f"item {item.get('id')!r}: no per-item object counts (mentions / mapped_objects)")
    return (int(bool(hallucinated)), len(hallucinated), len(mentions), covered, len(item["ground_truth"]), words)


def count_matrix(per_item: list[dict], ids: list[str]) -> np.ndarray:
    """(len(ids), len(COLUMNS)) array of counts, rows in the order of `ids`."""
    by_id = {str(it["id"]): it for it in per_item}
    return np.array([item_counts(by_id[i]) for i in ids], dtype=float).reshape(len(ids), len(COLUMNS))


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
