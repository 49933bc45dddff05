"""Pair statistics, the one-sided tests and Benjamini-Hochberg over the full family (cooc.scoring)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cooc import CooccurrenceCounter, GroupFinder, score_pairs
from stats import bh_adjust
from cooc.scoring import upper_tail
from cooc.synthetic import independent_chunk, planted


def test_expected_jaccard_and_npmi_match_their_direct_formulas():
    rng = np.random.default_rng(0)
    acts = independent_chunk(rng.uniform(0.05, 0.4, 15), 500, rng)
    counter = CooccurrenceCounter(15).update(acts)
    df = score_pairs(counter, min_occurrences=1)
    B = acts.toarray() > 0
    N = 500
    for row in df.itertuples():
        n_i, n_j = B[:, row.i].sum(), B[:, row.j].sum()
        c = (B[:, row.i] & B[:, row.j]).sum()
        assert row.count == c
        assert row.expected == pytest.approx(n_i * n_j / N)
        assert row.jaccard == pytest.approx(c / (n_i + n_j - c))
        p_ij, p_i, p_j = c / N, n_i / N, n_j / N
        assert row.npmi == pytest.approx(np.log(p_ij / (p_i * p_j)) / -np.log(p_ij))


def test_npmi_is_one_for_latents_that_fire_on_every_token():
    acts = sp.csr_matrix(np.c_[np.ones((50, 2)), np.arange(50) % 3 == 0].astype(np.float32))
    df = score_pairs(CooccurrenceCounter(3).update(acts), min_occurrences=1)
    row = df[(df.i == 0) & (df.j == 1)].iloc[0]
    assert row["npmi"] == 1.0 and row["p_value"] == 1.0


def test_hypergeometric_p_value_is_the_one_sided_fisher_exact_test():
    for c, n_i, n_j, N in [(5, 10, 12, 100), (1, 3, 4, 50), (30, 40, 60, 1000), (0, 5, 5, 20)]:
        table = [[c, n_i - c], [n_j - c, N - n_i - n_j + c]]
        fisher = stats.fisher_exact(table, alternative="greater").pvalue
        got = upper_tail(np.array([c]), np.array([n_i]), np.array([n_j]), N, "hypergeometric")[0]
        assert got == pytest.approx(fisher, rel=1e-9)


def test_binomial_p_value_is_never_below_the_exact_one_above_expectation():
    rng = np.random.default_rng(0)
    for _ in range(300):
        N = int(rng.integers(20, 3000))
        n_i, n_j = int(rng.integers(1, N)), int(rng.integers(1, N))
        c = np.arange(int(np.ceil(n_i * n_j / N + 1)), min(n_i, n_j) + 1)  # c >= expected + 1
        if c.shape[0] == 0:
            continue
        ni, nj = np.full(c.shape, n_i), np.full(c.shape, n_j)
        exact = upper_tail(c, ni, nj, N, "hypergeometric")
        binom = upper_tail(c, ni, nj, N, "binomial")
        ok = (binom >= exact * (1 - 1e-9)) | (exact < 1e-290)  # below that both are denormal noise
        assert ok.all(), (N, n_i, n_j, c[~ok][:3])


@pytest.mark.parametrize("n, m", [(1, 1), (20, 20), (50, 400), (300, 10_000)])
def test_bh_with_an_explicit_family_size_matches_statsmodels_on_the_padded_vector(n, m):
    rng = np.random.default_rng(n)
    p = np.concatenate([rng.uniform(0, 1e-4, n // 3), rng.uniform(0, 1, n - n // 3)])
    p[: n // 5] = p[0]  # ties
    padded = np.concatenate([p, np.ones(m - n)])
    ref = multipletests(padded, alpha=0.05, method="fdr_bh")[1][:n]
    np.testing.assert_allclose(bh_adjust(p, m), ref, rtol=1e-12, atol=0)
    with pytest.raises(ValueError):
        bh_adjust(p, n - 1)


def test_the_test_family_is_all_pairs_of_latents_firing_at_least_min_occurrences_times():
    rng = np.random.default_rng(3)
    acts = independent_chunk(np.r_[np.full(30, 0.2), np.full(10, 0.001)], 2000, rng)
    counter = CooccurrenceCounter(40).update(acts)
    df = score_pairs(counter, min_occurrences=10)
    K = int((counter.occ_F >= 10).sum())
    assert df.attrs["family_size"] == K * (K - 1) // 2 and df.attrs["n_tested"] == K
    assert set(df.i).union(df.j) <= set(np.flatnonzero(counter.occ_F >= 10))
    padded = np.concatenate([df.p_value, np.ones(df.attrs["family_size"] - len(df))])
    np.testing.assert_allclose(df.p_adj, multipletests(padded, method="fdr_bh")[1][: len(df)], rtol=1e-12)
    same = score_pairs(counter.counts_, n_tokens=counter.n_tokens_, min_occurrences=10)
    np.testing.assert_allclose(same[["i", "j", "count", "p_adj"]].to_numpy(), df[["i", "j", "count", "p_adj"]].to_numpy())


@pytest.mark.parametrize("test", ["binomial", "hypergeometric"])
def test_on_independent_latents_significant_pairs_stay_within_the_nominal_fdr(test):
    """Complete null: BH at alpha keeps P(any discovery) <= alpha; over 20 datasets at most 4 may have one."""
    with_any = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        rate = np.exp(rng.normal(np.log(0.03), 1.0, 120)).clip(0.002, 0.5)
        counter = CooccurrenceCounter(120).update(independent_chunk(rate, 3000, rng))
        df = score_pairs(counter, min_occurrences=5, test=test)
        with_any += bool((df.p_adj < 0.05).any())
        groups = GroupFinder(min_count=1, min_jaccard=0, min_npmi=-1).fit(df).groups_
        assert sum(g.size for g in groups) <= 2 * int((df.p_adj < 0.05).sum())
    assert with_any <= 4  # P(Binomial(20, 0.05) >= 5) < 0.003


def test_on_planted_data_the_false_discovery_proportion_is_small():
    data = planted(d_sae=1200, n_tokens=15_000, seed=5)
    df = score_pairs(CooccurrenceCounter(1200).update(data.acts_TF), min_occurrences=10)
    true = {(a, b) for g in data.groups for a in g for b in g if a < b}
    disc = df[df.p_adj < 0.05]
    false = sum((i, j) not in true for i, j in zip(disc.i, disc.j))
    assert len(disc) > 50
    assert false / len(disc) <= 0.1
