"""Per-pair statistics of co-occurrence counts and a false-discovery-rate controlled test.

For latents i, j with occurrence counts n_i, n_j, pair count c_ij over N counted tokens:

* expected  = n_i n_j / N                             (count under independence)
* jaccard   = c_ij / (n_i + n_j - c_ij)
* npmi      = log(c_ij N / (n_i n_j)) / -log(c_ij / N)   (1 when c_ij = N)
* p_value   = P(X >= c_ij), X ~ Hypergeometric(N, n_i, n_j): the one-sided Fisher exact test of
  co-occurrence above chance, conditional on both latents' occurrence counts.

Multiple testing family: every unordered pair of *tested* latents, i.e. latents that fire at
least ``min_occurrences`` times; its size is m = K (K - 1) / 2 for K tested latents. Pairs that
never co-occur are not stored; their count is 0 and their p-value exactly 1, so they enter the
Benjamini-Hochberg procedure only through m (ranks after every stored pair; adjusted p = 1).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from cooc.counting import CooccurrenceCounter, UpperPairs
from sources.errors import ConfigError

PAIR_COLUMNS = ["i", "j", "count", "expected", "jaccard", "npmi", "p_value", "p_adj"]


def bh_adjust(p_values: np.ndarray, m: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values for ``p_values`` within a family of ``m >= len`` tests.

    The m - len(p_values) untested members are taken to have p = 1 (they rank last and their
    own adjusted values are 1), which is what running BH on the padded vector would give.
    """
    p = np.asarray(p_values, dtype=np.float64)
    n = p.shape[0]
    m = n if m is None else int(m)
    if m < n:
        raise ValueError(f"family size m={m} is smaller than the {n} p-values given")
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, n + 1)
    adj_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adj_sorted, 1.0)
    return out


def pair_stats(count: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, n_tokens: int) -> dict[str, np.ndarray]:
    """expected, jaccard, npmi and the hypergeometric upper-tail p-value for each pair."""
    c = count.astype(np.float64)
    ni, nj = n_i.astype(np.float64), n_j.astype(np.float64)
    N = float(n_tokens)
    expected = ni * nj / N
    jaccard = c / (ni + nj - c)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c) + np.log(N) - np.log(ni) - np.log(nj)
        npmi = np.where(c >= N, 1.0, pmi / -(np.log(c) - np.log(N)))
    p_value = stats.hypergeom.sf(count - 1, n_tokens, n_i, n_j)
    return {"expected": expected, "jaccard": jaccard, "npmi": npmi, "p_value": np.clip(p_value, 0.0, 1.0)}


def _from_matrix(counts: sp.spmatrix) -> tuple[UpperPairs, np.ndarray]:
    counts = sp.csr_matrix(counts)
    if counts.shape[0] != counts.shape[1]:
        raise ConfigError("counts", f"expected a square symmetric counts matrix, got shape {counts.shape}")
    occ_F = counts.diagonal().astype(np.int64)
    upper = sp.triu(counts, k=1).tocoo()
    order = np.lexsort((upper.col, upper.row))
    return UpperPairs(upper.row[order].astype(np.int64), upper.col[order].astype(np.int64),
                      upper.data[order].astype(np.int64)), occ_F


def score_pairs(counts: CooccurrenceCounter | sp.spmatrix, n_tokens: int | None = None,
                min_occurrences: int = 10) -> pd.DataFrame:
    """Score every stored pair of tested latents; return a DataFrame sorted by (i, j).

    ``counts``: a fitted :class:`CooccurrenceCounter`, or a symmetric sparse counts matrix whose
    diagonal holds the occurrences (then ``n_tokens`` is required). Columns: PAIR_COLUMNS.
    ``df.attrs`` holds ``family_size`` (m), ``n_tested`` (K) and ``n_tokens`` (N).
    """
    if isinstance(counts, CooccurrenceCounter):
        pairs, occ_F, N = counts.upper_pairs(), counts.occ_F, counts.n_tokens_
    else:
        if n_tokens is None:
            raise ConfigError("n_tokens", "score_pairs on a counts matrix needs n_tokens")
        (pairs, occ_F), N = _from_matrix(counts), int(n_tokens)
    if N <= 0:
        raise ConfigError("activations", "no tokens were counted; check the input and the masks")
    tested_F = occ_F >= min_occurrences
    n_tested = int(tested_F.sum())
    family = n_tested * (n_tested - 1) // 2
    keep = tested_F[pairs.i] & tested_F[pairs.j]
    i, j, c = pairs.i[keep], pairs.j[keep], pairs.count[keep]
    df = pd.DataFrame({"i": i, "j": j, "count": c})
    for name, values in pair_stats(c, occ_F[i], occ_F[j], N).items():
        df[name] = values
    df["p_adj"] = bh_adjust(df["p_value"].to_numpy(), family)
    df.attrs.update(family_size=family, n_tested=n_tested, n_tokens=N)
    return df
