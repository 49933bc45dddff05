"""Probe metrics that evaluate many bootstrap replicates at once.

Every metric takes the true values ``y_N``, the predictions ``pred_N`` and optional weights, either
one weight vector ``w_N`` (returns a float) or a matrix ``W_BN`` of ``B`` weight vectors (returns an
array of ``B`` values). Weights are frequency weights: an integer weight ``c`` counts a token ``c``
times, so a document-level bootstrap replicate is a weight vector of resample counts, and the whole
bootstrap is one matrix product instead of ``B`` Python-level metric calls. With unit weights each
metric equals its scikit-learn / scipy counterpart (``r2_score``, ``spearmanr``, ``accuracy_score``,
``roc_auc_score``, ``log_loss``); ``tests/test_stats_metrics.py`` checks that.

Undefined values are NaN: R² when the (weighted) targets are constant, Spearman when either side is
constant, AUROC when only one class has weight.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

REGRESSION_METRICS: tuple[str, ...] = ("r2", "spearman")
CLASSIFICATION_METRICS: tuple[str, ...] = ("accuracy", "auroc", "log_loss")
HIGHER_IS_BETTER: dict[str, bool] = {"r2": True, "spearman": True, "accuracy": True, "auroc": True, "log_loss": False}


def metrics_for(kind: str) -> tuple[str, ...]:
    """The metric names reported for a ``regression`` or ``classification`` target."""
    if kind == "regression":
        return REGRESSION_METRICS
    if kind == "classification":
        return CLASSIFICATION_METRICS
    raise ValueError(f"unknown target kind {kind!r}; expected 'regression' or 'classification'")


def _weights(w, n: int) -> tuple[np.ndarray, bool]:
    """(W_BN float64, was_1d)."""
    if w is None:
        return np.ones((1, n)), True
    W = np.asarray(w, dtype=np.float64)
    single = W.ndim == 1
    W = np.atleast_2d(W)
    if W.shape[1] != n:
        raise ValueError(f"weights have {W.shape[1]} columns for {n} values")
    if (W < 0).any():
        raise ValueError("weights must be non-negative")
    return W, single


def _out(values_B: np.ndarray, single: bool):
    return float(values_B[0]) if single else values_B


def _safe_div(num, den):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def r2(y_N, pred_N, w=None, baseline_N=None):
    """Coefficient of determination 1 - SSE/SST (SST around the weighted mean of y).

    With ``baseline_N`` (a reference prediction per token, e.g. each training fold's mean label) SST is
    the squared error of that baseline instead: out-of-sample R², 0 for the baseline itself.
    """
    y = np.asarray(y_N, dtype=np.float64)
    p = np.asarray(pred_N, dtype=np.float64)
    W, single = _weights(w, len(y))
    sw = W.sum(1)
    sse = W @ (y - p) ** 2
    if baseline_N is None:
        ybar = _safe_div(W @ y, sw)
        sst = (W * (y[None, :] - ybar[:, None]) ** 2).sum(1)
    else:
        sst = W @ (y - np.asarray(baseline_N, dtype=np.float64)) ** 2
    # a constant target (SST numerically zero) leaves R² undefined
    scale = np.maximum(W @ y ** 2, 1e-300)
    const = sst <= 1e-12 * scale
    out = np.where(const, np.nan, 1.0 - _safe_div(sse, np.where(const, 1.0, sst)))
    return _out(out, single)


def _sum_by_value(v: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(S_BU, inv_N)``: for each replicate, the total weight of each distinct value of ``v`` (ascending)."""
    order = np.argsort(v, kind="stable")
    sv = v[order]
    starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
    inv = np.empty(len(v), dtype=np.int64)
    inv[order] = np.cumsum(np.r_[True, sv[1:] != sv[:-1]]) - 1
    S = np.add.reduceat(W[:, order], starts, axis=1) if len(v) else np.zeros((W.shape[0], 0))
    return S, inv


def _weighted_ranks(v: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share the mean rank) of ``v`` in the multiset weighted by each row of W."""
    Wu, inv = _sum_by_value(v, W)  # weight of each unique value, per replicate [B, U]
    below = np.cumsum(Wu, axis=1) - Wu
    rank_U = below + (Wu + 1.0) / 2.0
    return rank_U[:, inv]


def _weighted_pearson(a_BN: np.ndarray, b_BN: np.ndarray, W: np.ndarray) -> np.ndarray:
    sw = np.maximum(W.sum(1, keepdims=True), 1e-300)
    am = (W * a_BN).sum(1, keepdims=True) / sw
    bm = (W * b_BN).sum(1, keepdims=True) / sw
    da, db = a_BN - am, b_BN - bm
    cov = (W * da * db).sum(1)
    va = (W * da * da).sum(1)
    vb = (W * db * db).sum(1)
    scale_a = np.maximum((W * a_BN * a_BN).sum(1), 1e-300)
    scale_b = np.maximum((W * b_BN * b_BN).sum(1), 1e-300)
    bad = (va <= 1e-12 * scale_a) | (vb <= 1e-12 * scale_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / np.sqrt(np.where(bad, 1.0, va * vb))
    return np.where(bad, np.nan, np.clip(r, -1.0, 1.0))


def spearman(y_N, pred_N, w=None):
    """Spearman rank correlation: Pearson correlation of average ranks within the weighted multiset."""
    y = np.asarray(y_N, dtype=np.float64)
    p = np.asarray(pred_N, dtype=np.float64)
    W, single = _weights(w, len(y))
    ry = _weighted_ranks(y, W)
    rp = _weighted_ranks(p, W)
    return _out(_weighted_pearson(ry, rp, W), single)


def accuracy(y_N, prob_N, w=None):
    """Fraction correct when predicting class 1 for probability > 0.5 (as ``LogisticRegression.predict``)."""
    y = np.asarray(y_N).astype(np.float64)
    p = np.asarray(prob_N, dtype=np.float64)
    W, single = _weights(w, len(y))
    correct = ((p > 0.5).astype(np.float64) == y).astype(np.float64)
    return _out(_safe_div(W @ correct, W.sum(1)), single)


def log_loss(y_N, prob_N, w=None):
    """Mean binary cross-entropy of P(class 1), probabilities clipped to [eps, 1 - eps] as scikit-learn does."""
    y = np.asarray(y_N).astype(np.float64)
    p = np.asarray(prob_N, dtype=np.float64)
    eps = np.finfo(p.dtype).eps
    p = np.clip(p, eps, 1 - eps)
    W, single = _weights(w, len(y))
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p))
    return _out(_safe_div(W @ loss, W.sum(1)), single)


def auroc(y_N, score_N, w=None):
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted as one half."""
    y = np.asarray(y_N).astype(np.float64)
    s = np.asarray(score_N, dtype=np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("auroc needs binary labels 0/1")
    W, single = _weights(w, len(y))
    pos_BU, _ = _sum_by_value(s, W * y)
    neg_BU, _ = _sum_by_value(s, W * (1 - y))
    neg_below = np.cumsum(neg_BU, axis=1) - neg_BU
    num = (pos_BU * (neg_below + 0.5 * neg_BU)).sum(1)
    den = pos_BU.sum(1) * neg_BU.sum(1)
    return _out(_safe_div(num, den), single)


METRICS: dict[str, Callable] = {"r2": r2, "spearman": spearman, "accuracy": accuracy, "auroc": auroc, "log_loss": log_loss}


def score(metric: str, y_N, pred_N, w=None):
    """Evaluate ``metric`` by name (see :data:`METRICS`)."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}") from None
    return fn(y_N, pred_N, w)
