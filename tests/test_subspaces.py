"""Subspaces: projections match the explicit formulas, angles of known subspaces, PCA views, matched controls."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.decomposition import PCA as SkPCA

from subspaces import Subspace, activation_pca, frequency_bins, matched_groups, pca, principal_angles, random_subspaces, reconstruction_pca

finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def subspace_and_acts(draw):
    d = draw(st.integers(2, 8))
    k = draw(st.integers(1, d))
    vecs = draw(arrays(np.float64, (k, d), elements=finite))
    if np.linalg.matrix_rank(vecs) == 0 or np.abs(vecs).max() < 1e-3:
        vecs = np.eye(d)[:k]
    acts = draw(arrays(np.float64, (draw(st.integers(1, 5)), d), elements=finite))
    return Subspace.from_vectors(vecs), acts


@settings(max_examples=60, deadline=None)
@given(subspace_and_acts())
def test_projection_is_idempotent(case):
    s, x = case
    once = s.project(x)
    np.testing.assert_allclose(s.project(once), once, atol=1e-8 * (1 + np.abs(x).max()))


@settings(max_examples=60, deadline=None)
@given(subspace_and_acts())
def test_projection_plus_projection_out_is_the_identity(case):
    s, x = case
    np.testing.assert_allclose(s.project(x) + s.project_out(x), x, atol=1e-9 * (1 + np.abs(x).max()))
    # and the two parts are orthogonal
    np.testing.assert_allclose((s.project(x) * s.project_out(x)).sum(1), 0, atol=1e-7 * (1 + np.abs(x).max()) ** 2)


@settings(max_examples=60, deadline=None)
@given(subspace_and_acts())
def test_coordinate_norm_equals_projection_norm(case):
    s, x = case
    np.testing.assert_allclose(np.linalg.norm(s.coords(x), axis=1), np.linalg.norm(s.project(x), axis=1),
                               rtol=1e-9, atol=1e-9 * (1 + np.abs(x).max()))


def test_projection_matches_the_explicit_formula_for_a_non_orthonormal_spanning_set():
    rng = np.random.default_rng(0)
    V = rng.normal(size=(3, 10))  # rows span the subspace, not orthonormal
    x = rng.normal(size=(7, 10))
    explicit = x @ V.T @ np.linalg.inv(V @ V.T) @ V  # P = V^T (V V^T)^-1 V
    s = Subspace.from_vectors(V)
    np.testing.assert_allclose(s.project(x), explicit, atol=1e-10)
    np.testing.assert_allclose(s.basis_DK.T @ s.basis_DK, np.eye(3), atol=1e-12)


def test_decoder_subspace_spans_the_members_decoder_vectors_and_accepts_torch():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(50, 16))
    s = Subspace.from_decoder(torch.tensor(W), [3, 7, 11])
    assert s.dim == 3 and s.latents == (3, 7, 11)
    np.testing.assert_allclose(s.project(W[[3, 7, 11]]), W[[3, 7, 11]], atol=1e-10)
    assert np.linalg.norm(s.project(W[[4]])) < np.linalg.norm(W[4])
    # linearly dependent decoder vectors add no dimension
    W[11] = W[3] + 2 * W[7]
    assert Subspace.from_decoder(W, [3, 7, 11]).dim == 2
    with pytest.raises(ValueError):
        Subspace.from_decoder(W, [60])


def test_principal_angles_of_known_subspaces():
    e = np.eye(4)
    xy = Subspace.from_vectors(e[[0, 1]])
    assert principal_angles(xy, xy) == pytest.approx([0, 0], abs=1e-7)
    zw = Subspace.from_vectors(e[[2, 3]])
    assert principal_angles(xy, zw) == pytest.approx([np.pi / 2] * 2)
    theta = 0.3
    tilted = Subspace.from_vectors([[1, 0, 0, 0], [0, np.cos(theta), np.sin(theta), 0]])
    assert xy.angles(tilted) == pytest.approx([0, theta])


def test_random_subspaces_are_orthonormal_seeded_and_nearly_orthogonal_in_high_dimension():
    a = random_subspaces(512, 4, 3, seed=0)
    b = random_subspaces(512, 4, 3, seed=0)
    np.testing.assert_array_equal(a[0].basis_DK, b[0].basis_DK)
    np.testing.assert_allclose(a[1].basis_DK.T @ a[1].basis_DK, np.eye(4), atol=1e-12)
    assert principal_angles(a[0], a[1]).min() > 1.2  # random 4-dim subspaces of R^512 are far apart


def test_pca_matches_sklearn_up_to_sign():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    ours = pca(X, 3)
    ref = SkPCA(3).fit(X)
    np.testing.assert_allclose(ours.explained_variance_K, ref.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(np.abs(ours.components_KD), np.abs(ref.components_), atol=1e-8)
    np.testing.assert_allclose(np.abs(ours.scores(X)), np.abs(ref.transform(X)), atol=1e-8)


def test_reconstruction_pca_uses_only_tokens_where_a_member_fires_and_lies_in_the_decoder_span():
    rng = np.random.default_rng(3)
    W = rng.normal(size=(20, 8))
    A = np.zeros((100, 20))
    A[:60, [2, 5, 9]] = rng.exponential(size=(60, 3)) * (rng.random((60, 3)) < 0.7)
    A[60:, 0] = 1.0  # a non-member fires elsewhere
    res = reconstruction_pca(sp.csr_matrix(A), W, [2, 5, 9])
    fired = np.flatnonzero((A[:, [2, 5, 9]] > 0).any(1))
    np.testing.assert_array_equal(res.rows_N, fired)
    span = Subspace.from_decoder(W, [2, 5, 9])
    np.testing.assert_allclose(span.project(res.components_KD), res.components_KD, atol=1e-10)
    explicit = SkPCA().fit(A[fired][:, [2, 5, 9]] @ W[[2, 5, 9]])
    np.testing.assert_allclose(res.explained_variance_K, explicit.explained_variance_[:len(res.explained_variance_K)], rtol=1e-8)
    act = activation_pca(A @ W, sp.csr_matrix(A), [2, 5, 9], n_components=2)
    np.testing.assert_array_equal(act.rows_N, fired)


def test_matched_groups_are_matched_in_size_and_frequency_bin_disjoint_and_seeded():
    rng = np.random.default_rng(0)
    counts = rng.negative_binomial(1, 0.01, size=500)
    counts[:50] = 0  # dead latents share a bin
    bins = frequency_bins(counts, 10)
    group = [3, 100, 250, 499, 77]
    ctrls = matched_groups(group, counts, n_controls=20, n_bins=10, seed=5)
    assert len(ctrls) == 20
    for c in ctrls:
        assert len(c.latents) == len(group) == len(set(c.latents))
        assert not set(c.latents) & set(group)
        assert [bins[j] for j in c.latents] == [bins[i] for i in group]
    again = matched_groups(group, counts, n_controls=20, n_bins=10, seed=5)
    assert [c.latents for c in again] == [c.latents for c in ctrls]
    assert len({c.latents for c in ctrls}) > 1


def test_frequency_bins_keep_equal_counts_together():
    counts = np.array([0] * 30 + list(range(1, 71)))
    bins = frequency_bins(counts, 10)
    assert len(set(bins[:30])) == 1
    assert (np.diff(bins[np.argsort(counts, kind="stable")]) >= 0).all()


def test_a_frequency_bin_too_small_for_a_matched_group_is_an_error():
    counts = np.arange(20)
    with pytest.raises(ValueError, match="use fewer bins"):
        matched_groups([0, 1], counts, n_controls=1, n_bins=10)


def test_enrichment_matched_controls_fire_like_the_members_on_the_task_and_never_co_occur():
    from subspaces import enrichment_matched_groups

    rng = np.random.default_rng(0)
    F = 400
    task = rng.poisson(rng.gamma(1.0, 5.0, F))
    other = rng.poisson(rng.gamma(1.0, 50.0, F))
    group = [3, 17, 42, 99]
    task[group] = [60, 55, 40, 0]  # selective members, and one that never fires on the task
    other[group] = [5, 8, 3, 200]
    linked = {(i, j) for i in range(F) for j in range(i + 1, F) if (i + j) % 7 == 0}  # many co-occurring pairs
    ctrls = enrichment_matched_groups(group, task, other, 30, seed=1, linked=linked, pool=10)
    assert len(ctrls) == 30 and len({c.latents for c in ctrls}) > 1
    for c in ctrls:
        assert not set(c.latents) & set(group) and len(set(c.latents)) == len(group)
        assert not any((min(a, b), max(a, b)) in linked for a in c.latents for b in c.latents if a != b)
    # each control is among the latents nearest its member in (log task firings, log other firings)
    d = lambda m, j: np.hypot(np.log1p(task[j]) - np.log1p(task[m]), np.log1p(other[j]) - np.log1p(other[m]))  # noqa: E731
    for pos, m in enumerate(group):
        dist = np.array([d(m, j) for j in range(F) if j not in group])
        chosen = np.array([d(m, c.latents[pos]) for c in ctrls])
        assert (chosen <= np.quantile(dist, 0.1)).all()
    assert enrichment_matched_groups(group, task, other, 3, seed=1, linked=linked) == \
        enrichment_matched_groups(group, task, other, 3, seed=1, linked=linked)
    with pytest.raises(ValueError, match="outside the group"):
        enrichment_matched_groups(list(range(5)), task[:8], other[:8], 1)
