"""One view of an SAE for every stage, and the firing rule.

Every SAE architecture quirk the framework depends on is handled here and nowhere else:

- **encode** to dense float32 latents (sae_lens may return sparse tensors or a lower dtype);
- **decode**, and the decoder *as the SAE applies it*: TopK SAEs trained with ``rescale_acts_by_decoder_norm``
  divide each decoder row by its norm, so a group's reconstruction is ``sum_i a_i W_dec[i] / ||W_dec[i]||``;
- the **output scale** by which an SAE with run-time input normalisation rescales what it decodes;
- the **JumpReLU threshold** θ, which the firing rule adds to the configured threshold.

The firing rule, :func:`fires`, says a latent fires at a token when its activation is strictly greater than its
threshold. Co-occurrence counting, probe datasets, interventions, the report's explorer and subspace PCAs all
call it; a new architecture (a different encode, a different threshold) changes this file only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from sources.errors import ConfigError

Tensor = torch.Tensor


def fires(acts, threshold=0.0):
    """Where latents fire: ``acts > threshold``, the framework's only firing rule.

    ``acts``: latent activations ``[..., F]`` as a torch tensor, a numpy array, or a scipy sparse matrix ``[N, F]``.
    ``threshold``: a scalar or one value per latent (``[F]``, broadcast over the last axis). Returns a bool tensor,
    a bool array, or for sparse input a bool CSR matrix holding only the firing entries. Comparison happens in the
    dtypes given (no rounding of the threshold), so equal inputs give equal answers in every stage.
    """
    if sp.issparse(acts):
        csr = sp.csr_matrix(acts)
        # a scalar stays a Python number, so float32 activations are compared in float32 as in the dense path
        cut = np.asarray(threshold)[csr.indices] if np.ndim(threshold) == 1 else threshold
        keep = csr.data > cut
        row_N = np.repeat(np.arange(csr.shape[0]), np.diff(csr.indptr))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row_N[keep], minlength=csr.shape[0]))])
        return sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), csr.indices[keep],
                              indptr.astype(csr.indices.dtype)), shape=csr.shape)
    if isinstance(acts, Tensor):
        thr = threshold if not isinstance(threshold, (np.ndarray, Tensor)) else torch.as_tensor(threshold, device=acts.device)
        return acts > thr
    return np.asarray(acts) > threshold


def firing_threshold(threshold, theta_F=None):
    """The per-latent threshold of the firing rule: ``max(threshold, θ_F)``, or ``threshold`` without θ.

    A JumpReLU SAE already outputs 0 unless its pre-activation exceeds θ, and then outputs the pre-activation, so
    "activation > threshold" on its output means "pre-activation > max(threshold, θ)". Adding the two
    (``threshold + θ``) would count θ twice for threshold > 0; taking the maximum gives the SAE's own firing at
    threshold 0 and also applies θ to activations that did not pass through the JumpReLU (e.g. a file of
    pre-activations)."""
    if theta_F is None:
        return threshold
    return np.maximum(threshold, np.asarray(theta_F))


class SAEView:
    """An sae_lens SAE seen the way the framework uses it (see the module docstring).

    ``threshold`` is the configured firing threshold; ``use_sae_threshold`` also applies the SAE's JumpReLU θ where it
    has one (:func:`firing_threshold`). ``view.threshold_F`` is then the per-latent threshold every stage passes to
    :func:`fires`.
    """

    def __init__(self, sae: Any, threshold: float = 0.0, use_sae_threshold: bool = True):
        if isinstance(sae, SAEView):
            sae = sae.sae
        self.sae = sae
        self.threshold = float(threshold)
        self.use_sae_threshold = bool(use_sae_threshold)
        self._decoder: Tensor | None = None

    # ----------------------------------------------------------------------------- shape and thresholds
    @property
    def d_sae(self) -> int:
        return int(self.sae.W_dec.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.sae.W_dec.shape[1])

    @property
    def device(self) -> torch.device:
        return self.sae.W_dec.device

    @property
    def theta_F(self) -> np.ndarray | None:
        """Per-latent JumpReLU threshold θ (float32), or None when the SAE has none."""
        theta = getattr(self.sae, "threshold", None)
        if isinstance(theta, Tensor) and theta.ndim == 1:
            return theta.detach().float().cpu().numpy()
        return None

    @property
    def threshold_F(self) -> np.ndarray:
        """Per-latent firing threshold (float32): ``max(threshold, θ)`` (:func:`firing_threshold`; θ when used and
        present)."""
        theta = self.theta_F if self.use_sae_threshold else None
        return np.asarray(firing_threshold(np.full(self.d_sae, self.threshold, dtype=np.float32), theta), dtype=np.float32)

    def fires(self, acts):
        """:func:`fires` with this view's per-latent threshold (``acts`` over all ``d_sae`` latents)."""
        return fires(acts, self.threshold_F)

    # ----------------------------------------------------------------------------- encode / decode
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Dense float32 latents ``[..., d_sae]`` of activations ``x [..., d_in]``, on the device of ``x``."""
        W = self.sae.W_dec
        f = self.sae.encode(x.to(device=W.device, dtype=W.dtype))
        if f.is_sparse:
            f = f.to_dense()
        return f.float().to(x.device)

    def encode_sparse(self, x_ND: Tensor) -> sp.csr_matrix:
        """Latents of ``x [N, d_in]`` as a scipy CSR matrix holding the nonzero entries (float32)."""
        return to_csr(self.encode(x_ND))

    @torch.no_grad()
    def decode(self, f: Tensor) -> Tensor:
        """The SAE's reconstruction (float32) of latents ``f [..., d_sae]``."""
        return self.sae.decode(f.to(device=self.device, dtype=self.sae.W_dec.dtype)).float()

    def decoder_FD(self) -> Tensor:
        """Decoder rows ``[d_sae, d_in]`` (float32, SAE device) as the SAE applies them to its latents."""
        if self._decoder is None:
            W = self.sae.W_dec.detach().float()
            if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
                W = W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self._decoder = W
        return self._decoder

    def decoder_np(self) -> np.ndarray:
        """:meth:`decoder_FD` as a float32 numpy array on the CPU."""
        W = self.sae.W_dec.detach().float().cpu().numpy()
        if getattr(self.sae.cfg, "rescale_acts_by_decoder_norm", False):
            W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
        return W

    def output_scale(self, x: Tensor) -> Tensor | None:
        """Per-token factor ``[..., 1]`` by which the SAE's decode output is rescaled, or None when it is 1."""
        norm = getattr(self.sae.cfg, "normalize_activations", "none")
        if norm in ("none", None, "expected_average_only_in"):
            return None
        xf = x.float()
        if norm == "constant_norm_rescale":
            return xf.norm(dim=-1, keepdim=True) / (xf.shape[-1] ** 0.5)
        if norm == "layer_norm":
            return (xf - xf.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True)
        raise ConfigError("sae", f"SAE input normalisation {norm!r} is not supported "
                                 "(supported: none, expected_average_only_in, constant_norm_rescale, layer_norm)")


def as_view(sae, threshold: float = 0.0, use_sae_threshold: bool = True) -> SAEView:
    """``sae`` itself when it is already a view, else a view of it with the given firing threshold."""
    return sae if isinstance(sae, SAEView) else SAEView(sae, threshold, use_sae_threshold)


def to_csr(latents_NF: Tensor) -> sp.csr_matrix:
    """Dense latent activations -> scipy CSR holding the nonzero entries (float32)."""
    dense = latents_NF.detach().cpu()
    idx = dense.nonzero(as_tuple=False)
    rows = idx[:, 0].numpy()
    cols = idx[:, 1].numpy()
    vals = dense[idx[:, 0], idx[:, 1]].numpy().astype(np.float32)
    return sp.csr_matrix((vals, (rows, cols)), shape=tuple(dense.shape))
