"""Exact streaming co-occurrence counts (cooc.counting)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import cooc.counting as counting
from cooc import CooccurrenceCounter
from cooc.counting import symmetric
from cooc.result import jaccard_matrix
from sources.errors import ConfigError


def random_acts(seed: int, n_tokens: int, d_sae: int, density: float) -> sp.csr_matrix:
    """Sparse activations with positive and negative values (negatives never fire)."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n_tokens, d_sae)) < density
    vals = rng.normal(0.8, 1.0, (n_tokens, d_sae)) * mask
    return sp.csr_matrix(vals.astype(np.float32))


def dense_reference(acts: sp.csr_matrix, cut_F) -> tuple[np.ndarray, np.ndarray]:
    """Counts (diag = occurrences) and Jaccard by numpy B.T @ B."""
    B = (acts.toarray() > cut_F).astype(np.float64)
    C = B.T @ B
    occ = np.diag(C)
    with np.errstate(divide="ignore", invalid="ignore"):
        J = C / (occ[:, None] + occ[None, :] - C)
    J[C == 0] = 0
    np.fill_diagonal(J, 0)
    return C.astype(np.int64), J


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_tokens=st.integers(1, 50), d_sae=st.integers(1, 40),
       density=st.floats(0.0, 0.6), threshold=st.sampled_from([0.0, 0.5, 1.5]), with_theta=st.booleans(),
       n_shards=st.integers(1, 5), chunk=st.integers(1, 20))
def test_counts_and_jaccard_equal_a_dense_numpy_reference(seed, n_tokens, d_sae, density, threshold, with_theta,
                                                          n_shards, chunk):
    acts = random_acts(seed, n_tokens, d_sae, density)
    theta = np.random.default_rng(seed + 1).uniform(0, 0.7, d_sae) if with_theta else None
    counter = CooccurrenceCounter(d_sae, threshold, theta, n_shards=n_shards)
    for start in range(0, n_tokens, chunk):
        counter.update(acts[start:start + chunk])
    C_ref, J_ref = dense_reference(acts, threshold if theta is None else np.maximum(threshold, theta))
    counts = counter.counts_
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts.toarray(), C_ref)
    np.testing.assert_array_equal(counter.occ_F, np.diag(C_ref))
    pairs = counter.upper_pairs()
    counts_FF = symmetric(pairs.i, pairs.j, pairs.count.astype(np.int64), counter.occ_F, d_sae)
    np.testing.assert_allclose(jaccard_matrix(counts_FF).toarray(), J_ref, rtol=1e-12)
    assert counter.n_tokens_ == n_tokens


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 80), max_size=4))
def test_merging_chunk_counters_equals_counting_everything_at_once(seed, cuts):
    acts = random_acts(seed, 80, 30, 0.3)
    whole = CooccurrenceCounter(30, n_shards=3).update(acts)
    bounds = [0, *sorted(cuts), 80]
    parts = [CooccurrenceCounter(30, n_shards=3).update(acts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged + p  # __add__ leaves the operands untouched
    assert merged.n_tokens_ == whole.n_tokens_ == 80
    assert (merged.counts_ != whole.counts_).nnz == 0
    in_place = CooccurrenceCounter(30, n_shards=3)
    for p in parts:
        in_place.merge(p)
    assert (in_place.counts_ != whole.counts_).nnz == 0


def test_masked_rows_never_count():
    acts = random_acts(0, 40, 12, 0.4)
    keep = np.arange(40) % 3 != 0
    masked = CooccurrenceCounter(12).update(acts, keep_T=keep)
    kept_only = CooccurrenceCounter(12).update(acts[keep])
    assert masked.n_tokens_ == keep.sum()
    assert (masked.counts_ != kept_only.counts_).nnz == 0


def test_the_sae_threshold_theta_is_added_to_the_absolute_threshold():
    acts = sp.csr_matrix(np.array([[0.5, 1.0, 2.0], [0.2, 3.0, 0.9]], dtype=np.float32))
    counter = CooccurrenceCounter(3, threshold=0.1, theta_F=np.array([0.3, 1.0, 1.0])).update(acts)
    # fires: row 0 -> latents 0 (0.5 > 0.4), 2 (2.0 > 1.1); row 1 -> latent 1 (3.0 > 1.1)
    np.testing.assert_array_equal(counter.occ_F, [1, 1, 1])
    np.testing.assert_array_equal(counter.counts_.toarray(), [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    strict = CooccurrenceCounter(3, threshold=0.5).update(acts)  # activation must be strictly greater
    np.testing.assert_array_equal(strict.occ_F, [0, 2, 2])


def test_duplicate_entries_are_summed_before_thresholding():
    acts = sp.csr_matrix((np.array([0.6, 0.6, 1.0], np.float32), np.array([0, 0, 1]), np.array([0, 3])), shape=(1, 2))
    assert not acts.has_canonical_format
    counter = CooccurrenceCounter(2, threshold=1.0).update(acts)
    np.testing.assert_array_equal(counter.occ_F, [1, 0])


def test_counts_switch_to_int64_before_they_could_overflow(monkeypatch):
    monkeypatch.setattr(counting, "_INT32_MAX", 25)
    acts = random_acts(1, 60, 10, 0.5)
    counter = CooccurrenceCounter(10)
    for start in range(0, 60, 20):
        counter.update(acts[start:start + 20])
    assert counter._dtype == np.int64
    np.testing.assert_array_equal(counter.counts_.toarray(), dense_reference(acts, 0.0)[0])


def test_pruning_only_drops_rare_pairs_and_never_inflates_counts():
    acts = random_acts(2, 200, 25, 0.2)
    exact = CooccurrenceCounter(25).update(acts).upper_pairs()
    pruned = CooccurrenceCounter(25, prune_below=3, prune_every=2)
    for start in range(0, 200, 10):
        pruned.update(acts[start:start + 10])
    got = pruned.upper_pairs()
    exact_map = {(i, j): c for i, j, c in zip(exact.i, exact.j, exact.count)}
    assert pruned.n_pruned_ > 0 and len(got.i) < len(exact.i)
    for i, j, c in zip(got.i, got.j, got.count):
        assert c <= exact_map[(i, j)]
    np.testing.assert_array_equal(pruned.occ_F, CooccurrenceCounter(25).update(acts).occ_F)  # occurrences stay exact


def test_upper_pairs_are_sorted_and_strictly_above_the_diagonal():
    counter = CooccurrenceCounter(40, n_shards=4).update(random_acts(3, 60, 40, 0.3))
    p = counter.upper_pairs()
    assert np.all(p.i < p.j) and np.all(p.count >= 1)
    keys = p.i * 40 + p.j
    assert np.all(np.diff(keys) > 0)


@pytest.mark.parametrize("make, needle", [
    (lambda: np.ones((3, 5)), "CSR"),
    (lambda: sp.coo_matrix(np.ones((3, 5))), "COO"),
    (lambda: sp.csr_matrix(np.ones((3, 4))), "d_sae=5"),
    (lambda: sp.csr_matrix(np.array([[np.nan, 1, 0, 0, 0]])), "NaN"),
])
def test_update_rejects_input_that_is_not_a_finite_csr_matrix_of_the_sae_width(make, needle):
    with pytest.raises(ConfigError, match=needle):
        CooccurrenceCounter(5).update(make())


def test_negative_thresholds_and_bad_theta_are_config_errors():
    with pytest.raises(ConfigError, match="threshold"):
        CooccurrenceCounter(5, threshold=-0.1)
    with pytest.raises(ConfigError, match="shape"):
        CooccurrenceCounter(5, theta_F=np.zeros(4))
    with pytest.raises(ConfigError, match=">= 0"):
        CooccurrenceCounter(5, theta_F=-np.ones(5))
    with pytest.raises(ConfigError, match="different"):
        CooccurrenceCounter(5).merge(CooccurrenceCounter(5, threshold=1.0))
