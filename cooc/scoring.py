"""Per-pair statistics of co-occurrence counts and a false-discovery-rate controlled test.

For latents i, j with occurrence counts n_i, n_j, pair count c_ij over N counted tokens:

* expected  = n_i n_j / N                             (count under independence)
* jaccard   = c_ij / (n_i + n_j - c_ij)
* npmi      = log(c_ij N / (n_i n_j)) / -log(c_ij / N)   (1 when c_ij = N)
* p_value   = P(X >= c_ij) for the count X under independence, one-sided (co-occurrence above
  chance). ``test="hypergeometric"``: X ~ Hypergeometric(N, n_i, n_j), the one-sided Fisher
  exact test conditional on both occurrence counts; its cost grows with min(n_i, n_j) (boost sums
  the tail), ~0.2 ms per pair for latents firing thousands of times. ``test="binomial"``
  (default): X ~ Binomial(min(n_i, n_j), max(n_i, n_j) / N), O(1) per pair via the regularised
  incomplete beta. The binomial tail is >= the hypergeometric tail for every c >= expected + 1
  (the hypergeometric is the more concentrated law; checked on a grid in the tests), so the
  binomial p-values are conservative wherever they can be small and BH on them still controls
  the FDR. ``test="document"``: the document-stratified null (cooc.documents): expected = Σ_d n_id n_jd / N_d
  from each latent's count in each document, tokens exchangeable only within a document, and the p-value a
  Poisson-Chernoff bound on the tail (valid, conservative); it needs the counter's per-document counts.

Multiple testing family: every unordered pair of *tested* latents, i.e. latents that fire at
least ``min_occurrences`` times; its size is m = K (K - 1) / 2 for K tested latents. Pairs that
never co-occur are not stored; their count is 0 and their p-value exactly 1, so they enter the
Benjamini-Hochberg procedure only through m (ranks after every stored pair; adjusted p = 1).

Memory-bounded scoring (``min_count > 1``; what ``method: significant`` uses, with cooc.min_count):
only a pair with at least ``min_count`` co-occurrences can become an edge, so only those pairs get
statistics and a row; every other member of the family (stored with a smaller count, or never
stored) is given p = 1, and BH runs with the full family size m. Given the occurrence counts the
p-value is a decreasing function of the count, so the new p' = g(p) with g non-decreasing and
g(p) >= p: a null p' stays super-uniform (P(p' <= t) <= P(p <= t) for every t) and a monotone
transform keeps the dependence conditions BH needs (independence, PRDS), so FDR control holds. The
result can only be more conservative than scoring every stored pair (a pair's BH rank can only
drop), never less. Pairs are streamed shard by shard from the counter's store and their statistics
written into preallocated columns, so the extra memory is ~20 bytes per stored pair of one shard
plus ~72 bytes per *kept* pair (8 columns) and BH's sort temporaries.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from cooc.counting import CooccurrenceCounter, UpperPairs
from cooc.documents import document_expected, poisson_chernoff_tail
from sources.errors import ConfigError
from stats.multiple import bh_adjust

PAIR_COLUMNS = ["i", "j", "count", "documents", "expected", "jaccard", "npmi", "p_value", "p_adj"]
"""``documents``: the documents in which the pair co-fires at one token at least (-1 where the input has no
document ids)."""


def upper_tail(count: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, n_tokens: int,
               test: str = "binomial") -> np.ndarray:
    """One-sided p-value P(X >= count) under independence (see the module doc for the two tests)."""
    if test == "hypergeometric":
        p = stats.hypergeom.sf(count - 1, n_tokens, n_i, n_j)
    elif test == "binomial":
        lo, hi = np.minimum(n_i, n_j), np.maximum(n_i, n_j)
        p = stats.binom.sf(count - 1, lo, hi / float(n_tokens))
    else:
        raise ValueError(f"unknown test {test!r}; use binomial, hypergeometric or document")
    return np.clip(p, 0.0, 1.0)


def pair_stats(count: np.ndarray, n_i: np.ndarray, n_j: np.ndarray, n_tokens: int,
               test: str = "binomial", doc_expected: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """expected, jaccard, npmi and the one-sided p-value for each pair. ``test="document"`` needs
    ``doc_expected`` (cooc.documents.document_expected): then ``expected`` is the document-stratified expectation
    and the p-value its Poisson-Chernoff bound."""
    c = count.astype(np.float64)
    ni, nj = n_i.astype(np.float64), n_j.astype(np.float64)
    N = float(n_tokens)
    expected = ni * nj / N if test != "document" else doc_expected
    jaccard = c / (ni + nj - c)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c) + np.log(N) - np.log(ni) - np.log(nj)
        npmi = np.where(c >= N, 1.0, pmi / -(np.log(c) - np.log(N)))
    p_value = poisson_chernoff_tail(count, expected) if test == "document" else upper_tail(count, n_i, n_j, n_tokens, test)
    return {"expected": expected, "jaccard": jaccard, "npmi": npmi, "p_value": p_value}


def _from_matrix(counts: sp.spmatrix) -> tuple[UpperPairs, np.ndarray]:
    counts = sp.csr_matrix(counts)
    if counts.shape[0] != counts.shape[1]:
        raise ConfigError("counts", f"expected a square symmetric counts matrix, got shape {counts.shape}")
    occ_F = counts.diagonal().astype(np.int64)
    upper = sp.triu(counts, k=1).tocoo()
    order = np.lexsort((upper.col, upper.row))
    return UpperPairs(upper.row[order].astype(np.int64), upper.col[order].astype(np.int64),
                      upper.data[order].astype(np.int64)), occ_F


def _shard_pairs(counter: CooccurrenceCounter, s: int, tested_F: np.ndarray, min_count: int):
    """(i, j, count) of shard ``s``'s stored pairs of tested latents with count >= min_count, sorted by
    (i, j), and the number of its stored pairs of tested latents (any count); None for an empty shard."""
    run = counter.shard(s)  # one canonical CSR per shard (rows r0.., columns offset by r0)
    if run is None or run.nnz == 0:
        return None
    r0 = int(counter.bounds_[s])
    rows = np.repeat(np.arange(r0, r0 + run.shape[0], dtype=np.int64), np.diff(run.indptr))
    cols = run.indices.astype(np.int64) + r0
    keep = tested_F[rows] & tested_F[cols]
    n_tested_stored = int(keep.sum())
    if min_count > 1:
        keep &= run.data >= min_count
    return rows[keep], cols[keep], run.data[keep].astype(np.int64), n_tested_stored


def _score_counter(counter: CooccurrenceCounter, tested_F: np.ndarray, min_count: int,
                   test: str) -> tuple[dict[str, np.ndarray], int]:
    """Columns (PAIR_COLUMNS but p_adj) of the kept pairs, computed one store shard at a time into
    preallocated arrays (two passes: sizes, then values), so temporaries are per shard."""
    n_shards = len(counter.bounds_) - 1
    sizes, n_tested_stored = [], 0
    for s in range(n_shards):
        part = _shard_pairs(counter, s, tested_F, min_count)
        sizes.append(0 if part is None else part[0].shape[0])
        n_tested_stored += 0 if part is None else part[3]
    n = int(sum(sizes))
    cols = {"i": np.empty(n, np.int64), "j": np.empty(n, np.int64), "count": np.empty(n, np.int64),
            "documents": np.full(n, -1, np.int64)}
    support = counter.support_
    cols.update({k: np.empty(n, np.float64) for k in ("expected", "jaccard", "npmi", "p_value")})
    occ_F, N, pos = counter.occ_F, counter.n_tokens_, 0
    doc_m = counter.docs_.matrix() if test == "document" else None
    for s in range(n_shards):
        if not sizes[s]:
            continue
        i, j, c, _ = _shard_pairs(counter, s, tested_F, min_count)
        sl = slice(pos, pos + c.shape[0])
        cols["i"][sl], cols["j"][sl], cols["count"][sl] = i, j, c
        if support is not None:
            cols["documents"][sl] = support.lookup(i, j)
        e_doc = document_expected(*doc_m, i, j) if doc_m is not None else None
        for name, values in pair_stats(c, occ_F[i], occ_F[j], N, test, e_doc).items():
            cols[name][sl] = values
        pos += c.shape[0]
    return cols, n_tested_stored


def score_pairs(counts: CooccurrenceCounter | sp.spmatrix, n_tokens: int | None = None,
                min_occurrences: int = 10, test: str = "binomial", min_count: int = 1) -> pd.DataFrame:
    """Score stored pairs of tested latents; return a DataFrame sorted by (i, j).

    ``counts``: a fitted :class:`CooccurrenceCounter`, or a symmetric sparse counts matrix whose
    diagonal holds the occurrences (then ``n_tokens`` is required). Columns: PAIR_COLUMNS.
    ``min_count`` (default 1: every stored pair): score only pairs with at least this many
    co-occurrences and treat every other family member as p = 1 in BH (module doc).
    ``df.attrs`` holds ``family_size`` (m), ``n_tested`` (K), ``n_tokens`` (N), ``min_count`` and
    ``n_tested_stored`` (stored pairs of tested latents, scored or not).
    """
    if min_count < 1:
        raise ConfigError("cooc.min_count", f"must be >= 1, got {min_count}")
    if test == "document" and not (isinstance(counts, CooccurrenceCounter) and counts.docs_ is not None):
        raise ConfigError("cooc.test", "document needs the document id of every counted token (the activation stream "
                                       "gives them; for a file, activations.documents); use binomial without them")
    if isinstance(counts, CooccurrenceCounter):
        occ_F, N = counts.occ_F, counts.n_tokens_
    else:
        if n_tokens is None:
            raise ConfigError("n_tokens", "score_pairs on a counts matrix needs n_tokens")
        (pairs, occ_F), N = _from_matrix(counts), int(n_tokens)
    if N <= 0:
        raise ConfigError("activations", "no tokens were counted; check the input and the masks")
    tested_F = occ_F >= min_occurrences
    n_tested = int(tested_F.sum())
    family = n_tested * (n_tested - 1) // 2
    if isinstance(counts, CooccurrenceCounter):
        cols, n_tested_stored = _score_counter(counts, tested_F, min_count, test)
    else:
        keep = tested_F[pairs.i] & tested_F[pairs.j]
        n_tested_stored = int(keep.sum())
        keep &= pairs.count >= min_count
        i, j, c = pairs.i[keep].astype(np.int64), pairs.j[keep].astype(np.int64), pairs.count[keep].astype(np.int64)
        cols = {"i": i, "j": j, "count": c, "documents": np.full(len(c), -1, np.int64),
                **pair_stats(c, occ_F[i], occ_F[j], N, test)}
    cols["p_adj"] = bh_adjust(cols["p_value"], family)
    df = pd.DataFrame({k: cols[k] for k in PAIR_COLUMNS}, copy=False)  # no copy of the columns
    df.attrs.update(family_size=family, n_tested=n_tested, n_tokens=N, min_count=int(min_count),
                    n_tested_stored=int(n_tested_stored))
    return df
