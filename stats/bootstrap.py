"""Cluster (document-level) bootstrap: confidence intervals and paired one-sided tests.

Tokens of one document are not independent, so every resample draws whole documents with
replacement (``cluster_bootstrap_weights``); a replicate is then a vector of per-token resample
counts that the vectorised metrics in :mod:`stats.metrics` consume directly. The same weight matrix
is used for every arm evaluated on the same tokens, which makes arm-vs-arm comparisons paired.

Intervals are percentile intervals. The paired one-sided test of "A is better than B" takes the
observed difference d and the replicate differences d*_b and, by default (``method="t"``), returns
``p = P(T > d / se)`` for a Student t with ``G - 1`` degrees of freedom, ``se`` being the bootstrap
standard deviation of d* inflated by ``sqrt(G / (G - 1))`` for G documents (the bootstrap's
small-sample variance deficit). ``method="normal"`` uses the normal tail instead. Unlike the
count-based shifted-null p-value (``method="shifted"``, Hall & Wilson 1991:
``p = (1 + #{d*_b - d >= d}) / (1 + B)``), these are not floored at ``1 / (B + 1)``, which matters
when Benjamini–Hochberg corrects over hundreds of comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, t as student_t


def cluster_bootstrap_weights(clusters_N, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``W_BN``: for each of ``n_boot`` replicates, how often token n's cluster was drawn.

    Each replicate draws as many clusters as there are, uniformly with replacement.
    """
    _, codes = np.unique(np.asarray(clusters_N), return_inverse=True)
    n_clusters = int(codes.max()) + 1 if len(codes) else 0
    if n_clusters == 0:
        return np.zeros((n_boot, 0))
    counts_BG = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    return counts_BG[:, codes].astype(np.float64)


def percentile_ci(samples_B, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicate values (NaN, NaN if none are finite)."""
    s = np.asarray(samples_B, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(s, [tail, 1.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap interval."""

    estimate: float
    ci_low: float
    ci_high: float
    samples_B: np.ndarray


@dataclass(frozen=True)
class Comparison:
    """Paired difference A - B, oriented so that positive means A is better, with a one-sided p-value."""

    estimate: float
    ci_low: float
    ci_high: float
    p_value: float
    n_boot: int


def estimate_with_ci(estimate: float, samples_B, level: float = 0.95) -> Estimate:
    lo, hi = percentile_ci(samples_B, level)
    return Estimate(float(estimate), lo, hi, np.asarray(samples_B, dtype=np.float64))


def paired_test(est_a: float, samples_a_B, est_b: float, samples_b_B, higher_is_better: bool = True,
                level: float = 0.95, n_clusters: int | None = None, method: str = "t") -> Comparison:
    """One-sided paired bootstrap test of "A is better than B" on the same replicates.

    ``samples_a_B`` and ``samples_b_B`` must come from the same bootstrap weights. Replicates where
    either value is undefined are dropped. ``n_clusters`` (documents) sets the t test's degrees of
    freedom and the sqrt(G/(G-1)) correction (without it: normal tail, no correction). The p-value is
    NaN when the observed difference is undefined or has no bootstrap variation.
    """
    if method not in ("t", "normal", "shifted"):
        raise ValueError(f"method must be 't', 'normal' or 'shifted', got {method!r}")
    sign = 1.0 if higher_is_better else -1.0
    d = sign * (float(est_a) - float(est_b))
    a = np.asarray(samples_a_B, dtype=np.float64)
    b = np.asarray(samples_b_B, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired replicates differ in shape: {a.shape} vs {b.shape}")
    db = sign * (a - b)
    db = db[np.isfinite(db)]
    lo, hi = percentile_ci(db, level)
    if not np.isfinite(d) or db.size < 2:
        return Comparison(d, lo, hi, float("nan"), int(db.size))
    if method == "shifted":
        p = (1.0 + np.count_nonzero(db - d >= d)) / (1.0 + db.size)
        return Comparison(d, lo, hi, float(p), int(db.size))
    se = float(np.std(db, ddof=1))
    if n_clusters is not None and n_clusters > 1:
        se *= np.sqrt(n_clusters / (n_clusters - 1.0))
    if se <= 1e-12 * max(1.0, abs(d)):
        # no sampling variation (e.g. identical predictions, or a single document): the test is undefined
        p = float("nan")
    elif method == "t" and n_clusters is not None and n_clusters > 1:
        p = float(student_t.sf(d / se, df=n_clusters - 1))
    else:
        p = float(norm.sf(d / se))
    return Comparison(d, lo, hi, p, int(db.size))
