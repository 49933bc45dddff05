"""The shared statistics agree with independent computations (scikit-learn, scipy, statsmodels, formulas)."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, log_loss as sk_log_loss, r2_score, roc_auc_score
from statsmodels.stats.multitest import multipletests

from stats import (accuracy, auroc, bh_adjust, cluster_bootstrap_weights, grouped_folds, log_loss, paired_test, percentile_ci, r2,
                   spearman)


def _data(seed=0, n=300):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=n)
    pred = y + rng.normal(size=n)
    pred[:40] = np.round(pred[:40])  # ties
    yc = (rng.random(n) < 0.4).astype(int)
    prob = np.round(np.clip(0.3 + 0.3 * yc + 0.3 * rng.random(n) - 0.15, 0.01, 0.99), 2)  # ties in scores
    return y, pred, yc, prob


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_with_unit_weights_equal_sklearn_and_scipy(seed):
    y, pred, yc, prob = _data(seed)
    assert r2(y, pred) == pytest.approx(r2_score(y, pred), abs=1e-12)
    assert spearman(y, pred) == pytest.approx(spearmanr(y, pred).statistic, abs=1e-12)
    assert auroc(yc, prob) == pytest.approx(roc_auc_score(yc, prob), abs=1e-12)
    assert log_loss(yc, prob) == pytest.approx(sk_log_loss(yc, prob), abs=1e-12)
    assert accuracy(yc, prob) == pytest.approx(accuracy_score(yc, prob > 0.5), abs=1e-12)


def test_integer_weights_equal_the_metric_on_repeated_data():
    y, pred, yc, prob = _data(3)
    w = np.random.default_rng(4).integers(0, 4, size=len(y))
    rep = np.repeat(np.arange(len(y)), w)
    assert r2(y, pred, w) == pytest.approx(r2_score(y[rep], pred[rep]), abs=1e-10)
    assert spearman(y, pred, w) == pytest.approx(spearmanr(y[rep], pred[rep]).statistic, abs=1e-10)
    assert auroc(yc, prob, w) == pytest.approx(roc_auc_score(yc[rep], prob[rep]), abs=1e-10)
    assert log_loss(yc, prob, w) == pytest.approx(sk_log_loss(yc[rep], prob[rep]), abs=1e-10)
    assert accuracy(yc, prob, w) == pytest.approx(accuracy_score(yc[rep], prob[rep] > 0.5), abs=1e-10)


def test_a_weight_matrix_gives_one_value_per_replicate_equal_to_separate_calls():
    y, pred, yc, prob = _data(5, n=120)
    W = cluster_bootstrap_weights(np.arange(120) // 6, 7, np.random.default_rng(0))
    for fn, a, b in [(r2, y, pred), (spearman, y, pred), (auroc, yc, prob), (log_loss, yc, prob), (accuracy, yc, prob)]:
        many = fn(a, b, W)
        assert many.shape == (7,)
        np.testing.assert_allclose(many, [fn(a, b, W[i]) for i in range(7)], atol=1e-12)


def test_out_of_sample_r2_is_measured_against_a_baseline_prediction():
    y, pred, _, _ = _data(6)
    base = np.full_like(y, 0.3)
    expect = 1 - ((y - pred) ** 2).sum() / ((y - base) ** 2).sum()
    assert r2(y, pred, baseline_N=base) == pytest.approx(expect, abs=1e-12)
    assert r2(y, base, baseline_N=base) == 0.0


def test_undefined_metrics_are_nan_not_errors():
    assert np.isnan(r2(np.ones(5), np.arange(5.0)))
    assert np.isnan(spearman(np.arange(5.0), np.ones(5)))
    assert np.isnan(auroc(np.ones(5), np.arange(5.0)))


def test_cluster_bootstrap_draws_whole_documents():
    docs = np.repeat([10, 20, 30, 40], [3, 1, 2, 4])
    W = cluster_bootstrap_weights(docs, 500, np.random.default_rng(0))
    for d in np.unique(docs):
        cols = W[:, docs == d]
        assert (cols == cols[:, :1]).all()  # every token of a document gets the same count
    per_doc = np.stack([W[:, docs == d][:, 0] for d in np.unique(docs)], 1)
    assert (per_doc.sum(1) == 4).all()  # each replicate draws as many documents as there are


def test_bootstrap_intervals_cover_a_known_accuracy_at_roughly_the_nominal_rate():
    # a fixed predictor that is right with probability 0.7 on every token; documents of 8 tokens
    rng = np.random.default_rng(0)
    docs = np.repeat(np.arange(40), 8)
    covered = 0
    reps = 300
    for _ in range(reps):
        y = np.zeros(len(docs))
        prob = np.where(rng.random(len(docs)) < 0.7, 0.2, 0.8)  # correct (p <= .5 for y = 0) with prob .7
        W = cluster_bootstrap_weights(docs, 400, rng)
        lo, hi = percentile_ci(accuracy(y, prob, W), 0.95)
        covered += lo <= 0.7 <= hi
    assert 0.90 <= covered / reps <= 0.99


def test_the_paired_test_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(1)
    docs = np.repeat(np.arange(50), 6)
    y = rng.normal(size=len(docs))
    good = y + 0.5 * rng.normal(size=len(docs))
    bad = y + 2.0 * rng.normal(size=len(docs))
    W = cluster_bootstrap_weights(docs, 500, rng)
    c = paired_test(r2(y, good), r2(y, good, W), r2(y, bad), r2(y, bad, W), n_clusters=50)
    assert c.estimate > 0 and c.ci_low > 0 and c.p_value < 1e-3
    c = paired_test(r2(y, bad), r2(y, bad, W), r2(y, good), r2(y, good, W), n_clusters=50)
    assert c.p_value > 0.99
    # lower-is-better metrics flip the orientation
    c = paired_test(1.0, np.full(10, 1.0) + rng.normal(0, .01, 10), 2.0, np.full(10, 2.0) + rng.normal(0, .01, 10),
                    higher_is_better=False)
    assert c.estimate == pytest.approx(1.0) and c.p_value < 1e-3


def test_benjamini_hochberg_matches_statsmodels_and_the_step_up_formula():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(40), rng.random(10) * 1e-3, [np.nan, np.nan]])
    adj = bh_adjust(p)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(adj[ok], multipletests(p[ok], method="fdr_bh")[1])
    assert np.isnan(adj[~ok]).all()
    # independent step-up computation: adj_(i) = min_{j >= i} p_(j) m / j
    q = p[ok]
    m = len(q)
    order = np.argsort(q)
    raw = q[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(raw[::-1])[::-1].clip(max=1)
    expect = np.empty(m)
    expect[order] = stepped
    np.testing.assert_allclose(adj[ok], expect)


def test_grouped_folds_never_split_a_document_and_cover_every_token():
    rng = np.random.default_rng(0)
    docs = rng.integers(0, 23, size=400)
    y = rng.integers(0, 2, size=400)
    for strat in (None, y):
        folds = grouped_folds(docs, 5, seed=3, stratify_N=strat)
        seen = np.concatenate([te for _, te in folds])
        assert sorted(seen) == list(range(400))
        for tr, te in folds:
            assert not set(docs[tr]) & set(docs[te])
    with pytest.raises(ValueError, match="only 3 documents"):
        grouped_folds(np.array([0, 1, 2, 2]), 5)
