"""Linear subspaces of the model's activation space built from latent groups, PCA or probe weights.

A :class:`Subspace` is an orthonormal basis ``basis_DK`` (columns) of a K-dimensional subspace of
R^D through the origin. It maps activations ``acts_ND`` to

* ``coords(acts_ND)``      -> ``[N, K]``, the coordinates in the basis (``acts @ basis``);
* ``project(acts_ND)``     -> ``[N, D]``, the orthogonal projection (``acts @ basis @ basis.T``);
* ``project_out(acts_ND)`` -> ``[N, D]``, what is left (``acts - project(acts)``).

Constructors: :meth:`Subspace.from_decoder` (span of a group's decoder vectors), :meth:`Subspace.from_vectors`
/ :meth:`Subspace.from_probe_weights`, :meth:`Subspace.random`; PCA views come back as :class:`PCA` results
(:func:`pca`, :func:`reconstruction_pca` — the reference method's view of a group — and
:func:`activation_pca`), whose ``.subspace`` is a Subspace. Inputs may be numpy arrays or torch tensors;
outputs are numpy float64 (float32 inputs stay float32 for coords/projections).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from sources.sae_view import fires


def as_numpy(x) -> np.ndarray:
    """numpy view of an array-like or a (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point and x.element_size() < 4:  # bfloat16 / float16 have no numpy twin
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def _dense(x) -> np.ndarray:
    if sp.issparse(x):
        return x.toarray()
    return as_numpy(x)


def orthonormal_basis(vectors_KD, rtol: float = 1e-6) -> np.ndarray:
    """Orthonormal basis ``[D, r]`` of the span of the rows of ``vectors_KD`` (r = numerical rank).

    Uses the SVD, so directions with singular value below ``rtol`` times the largest are dropped and
    the result does not depend on the order of the rows.
    """
    V = np.asarray(as_numpy(vectors_KD), dtype=np.float64)
    if V.ndim == 1:
        V = V[None, :]
    if V.size == 0 or not np.isfinite(V).all():
        raise ValueError("need finite, non-empty vectors to span a subspace")
    _, s, vt = np.linalg.svd(V, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        raise ValueError("all vectors are zero; they span no subspace")
    rank = int((s > rtol * s[0]).sum())
    return vt[:rank].T.copy()


@dataclass(frozen=True)
class Subspace:
    """An orthonormal basis ``basis_DK`` of a subspace, with where it came from."""

    basis_DK: np.ndarray
    name: str = ""
    latents: tuple[int, ...] = ()
    """Latents whose decoder vectors span it (empty for other constructions)."""

    def __post_init__(self):
        b = np.asarray(self.basis_DK, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] > b.shape[0]:
            raise ValueError(f"basis_DK must be [D, K] with K <= D, got shape {b.shape}")
        object.__setattr__(self, "basis_DK", b)

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def from_vectors(cls, vectors_KD, name: str = "", latents=(), rtol: float = 1e-6) -> "Subspace":
        """Orthonormalised span of the rows of ``vectors_KD`` (linearly dependent rows add no dimension)."""
        return cls(orthonormal_basis(vectors_KD, rtol), name, tuple(int(i) for i in latents))

    @classmethod
    def from_decoder(cls, W_dec_FD, latents, name: str = "", rtol: float = 1e-6) -> "Subspace":
        """Orthonormalised span of the decoder vectors ``W_dec_FD[latents]`` (SAE decoder is [d_sae, d_model])."""
        W = as_numpy(W_dec_FD)
        idx = np.asarray(list(latents), dtype=np.int64)
        if idx.size == 0:
            raise ValueError("a decoder subspace needs at least one latent")
        if idx.min() < 0 or idx.max() >= W.shape[0]:
            raise ValueError(f"latent ids must lie in [0, {W.shape[0]}); got {idx.tolist()}")
        return cls.from_vectors(W[idx], name or f"decoder{tuple(idx.tolist())}", idx.tolist(), rtol)

    @classmethod
    def from_probe_weights(cls, weights, name: str = "probe", rtol: float = 1e-6) -> "Subspace":
        """Span of a linear probe's weight vectors (``coef_`` of shape [D] or [C, D])."""
        return cls.from_vectors(weights, name, (), rtol)

    @classmethod
    def random(cls, d_model: int, dim: int, rng: np.random.Generator | int | None = None, name: str = "random") -> "Subspace":
        """A uniformly (Haar) distributed ``dim``-dimensional subspace of R^d_model."""
        if not 1 <= dim <= d_model:
            raise ValueError(f"dim must lie in [1, {d_model}], got {dim}")
        rng = np.random.default_rng(rng)
        q, r = np.linalg.qr(rng.standard_normal((d_model, dim)))
        q = q * np.sign(np.diag(r))[None, :]
        return cls(q, name)

    # --- properties -------------------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return int(self.basis_DK.shape[0])

    @property
    def dim(self) -> int:
        return int(self.basis_DK.shape[1])

    @property
    def projector_DD(self) -> np.ndarray:
        return self.basis_DK @ self.basis_DK.T

    # --- maps ---------------------------------------------------------------------------------
    def _check(self, acts_ND) -> np.ndarray:
        x = as_numpy(acts_ND)
        if x.shape[-1] != self.d_model:
            raise ValueError(f"activations have width {x.shape[-1]}, the subspace lives in R^{self.d_model}")
        return x

    def coords(self, acts_ND) -> np.ndarray:
        """Coordinates ``[N, K]`` of the activations in the orthonormal basis."""
        x = self._check(acts_ND)
        return x @ self.basis_DK.astype(x.dtype if x.dtype in (np.float32, np.float64) else np.float64)

    def project(self, acts_ND) -> np.ndarray:
        """Orthogonal projection ``[N, D]`` onto the subspace."""
        x = self._check(acts_ND)
        b = self.basis_DK.astype(x.dtype if x.dtype in (np.float32, np.float64) else np.float64)
        return (x @ b) @ b.T

    def project_out(self, acts_ND) -> np.ndarray:
        """The activations with their component in the subspace removed ``[N, D]``."""
        x = self._check(acts_ND)
        return x - self.project(x)

    def angles(self, other: "Subspace") -> np.ndarray:
        """Principal angles to ``other`` in radians, ascending (see :func:`principal_angles`)."""
        return principal_angles(self, other)


def principal_angles(a: Subspace | np.ndarray, b: Subspace | np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending, ``min(dim a, dim b)`` of them) between two subspaces.

    Accepts Subspaces or basis matrices ``[D, K]`` (columns need not be orthonormal).
    """
    A = a.basis_DK if isinstance(a, Subspace) else as_numpy(a)
    B = b.basis_DK if isinstance(b, Subspace) else as_numpy(b)
    return np.sort(scipy.linalg.subspace_angles(A, B))


@dataclass(frozen=True)
class PCA:
    """Principal components of a set of vectors (rows), centred on ``mean_D``."""

    subspace: Subspace
    """The span of the top components (``basis_DK`` columns are the components, in order)."""
    mean_D: np.ndarray
    explained_variance_K: np.ndarray
    explained_variance_ratio_K: np.ndarray
    n_samples: int
    rows_N: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Which input rows were used (for :func:`reconstruction_pca`/:func:`activation_pca`: where the group fires)."""

    @property
    def components_KD(self) -> np.ndarray:
        return self.subspace.basis_DK.T

    def scores(self, X_ND) -> np.ndarray:
        """Centred coordinates ``(X - mean) @ components.T`` ``[N, K]`` (the points of a PCA scatter plot)."""
        x = as_numpy(X_ND).astype(np.float64)
        return (x - self.mean_D) @ self.subspace.basis_DK


def pca(X_ND, n_components: int | None = None, name: str = "pca", latents=()) -> PCA:
    """PCA by SVD of the centred rows of ``X_ND``; ``n_components`` defaults to all non-degenerate ones."""
    X = np.asarray(_dense(X_ND), dtype=np.float64)
    n = X.shape[0]
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {n}")
    mean = X.mean(0)
    _, s, vt = np.linalg.svd(X - mean, full_matrices=False)
    var = s ** 2 / (n - 1)
    total = var.sum()
    keep = int((s > 1e-10 * max(s[0], 1e-300)).sum()) if s.size else 0
    if keep == 0:
        raise ValueError("all rows are identical; there is no principal component")
    k = keep if n_components is None else min(int(n_components), keep)
    # fix the sign of each component so that results are deterministic: largest |loading| positive
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])
    comps = comps * signs[:, None]
    sub = Subspace(comps.T.copy(), name, tuple(int(i) for i in latents))
    return PCA(sub, mean, var[:k], var[:k] / total, n)


def _fires_any(latents_NF, latents, threshold) -> np.ndarray:
    idx = np.asarray(list(latents), dtype=np.int64)
    A = latents_NF[:, idx]
    A = A.toarray() if sp.issparse(A) else as_numpy(A)
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 1 and thr.size != 1:
        thr = thr[idx]
    return fires(A, thr).any(1)


def reconstruction_pca(latents_NF, W_dec_FD, latents, n_components: int | None = None, threshold=0.0) -> PCA:
    """PCA of the group-restricted reconstruction sum_i a_i W_dec[i] over tokens where any member fires.

    This is the reference method's view of a latent group. ``latents_NF`` is the SAE's activations
    (dense or scipy sparse) for N tokens; ``threshold`` (scalar or per-latent [F]) is the firing rule
    ``a > threshold``. ``rows_N`` of the result lists the tokens used.
    """
    idx = np.asarray(list(latents), dtype=np.int64)
    rows = np.flatnonzero(_fires_any(latents_NF, idx, threshold))
    A = latents_NF[rows][:, idx]
    A = A.toarray() if sp.issparse(A) else as_numpy(A)
    recon_ND = A.astype(np.float64) @ as_numpy(W_dec_FD)[idx].astype(np.float64)
    res = pca(recon_ND, n_components, name=f"recon_pca{tuple(idx.tolist())}", latents=idx.tolist())
    return PCA(res.subspace, res.mean_D, res.explained_variance_K, res.explained_variance_ratio_K, res.n_samples, rows)


def activation_pca(acts_ND, latents_NF=None, latents=(), n_components: int | None = None, threshold=0.0) -> PCA:
    """PCA of the activations themselves, on the tokens where any of ``latents`` fires (all tokens if none given)."""
    X = as_numpy(acts_ND)
    if latents_NF is not None and len(latents):
        rows = np.flatnonzero(_fires_any(latents_NF, latents, threshold))
    else:
        rows = np.arange(X.shape[0])
    res = pca(X[rows], n_components, name="activation_pca", latents=latents)
    return PCA(res.subspace, res.mean_D, res.explained_variance_K, res.explained_variance_ratio_K, res.n_samples, rows)
