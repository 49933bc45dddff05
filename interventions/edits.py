"""What an intervention does to the residual stream at the hook: the edit arithmetic.

Every edit is expressed as an additive change ``delta`` to the activations ``x`` at the hook, so that
"change nothing" is ``delta == 0`` and reproduces the clean model bit for bit.

SAE-latent edits (modes ``zero``, ``mean``, ``clamp``, ``resample``) encode ``x``, change the chosen latents and decode,
keeping the SAE's error term ``x - sae(x)``::

    x' = sae.decode(f') + (x - sae.decode(f)) = x + (sae.decode(f') - sae.decode(f))
       = x + sum_i (f'_i - f_i) * W_dec_eff[i] * s(x)

where ``W_dec_eff`` is the decoder as the SAE applies it and ``s(x)`` undoes the SAE's run-time input
normalisation (both from :class:`sources.sae_view.SAEView`). Only the changed latents contribute, so a
no-op edit adds exactly 0. ``sae`` arguments accept an sae_lens SAE or its view.

Subspace edits act on the residual directly, with ``B`` an orthonormal basis ``[D, k]`` of the subspace:
``project_out`` (x - B B^T x), ``mean_project`` (x - B B^T (x - mu)), ``set_coordinates``
(x - B B^T x + B c) and ``steer`` (x + alpha v).

Every function takes a ``positions`` mask (``[..., L]`` bool or None = everywhere) restricting where
the edit applies, and returns tensors in float32 on the device of ``x``.
:func:`as_edit_fn` turns a delta function into an ``EditFn`` for :mod:`sources.patching`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sources.errors import ConfigError
from sources.sae_view import as_view

Tensor = torch.Tensor


# ----------------------------------------------------------------------------------- latent edits

def new_latent_values(f_K: Tensor, mode: str, *, mean_K: Tensor | None = None, clamp_K: Tensor | None = None,
                      values_K: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
    """The edited values of the chosen latents ``f_K [..., K]``.

    zero: 0 everywhere. mean: ``mean_K`` (each latent's mean activation over the tokens where it fires)
    at ``positions``. clamp: ``clamp_K`` at ``positions``. resample: ``values_K`` (per token, shaped like ``f_K``; the
    values at other tokens, see interventions.modes) at ``positions``. Outside ``positions`` the latents are unchanged.
    """
    if mode == "zero":
        new = torch.zeros_like(f_K)
    elif mode in ("mean", "clamp"):
        value = mean_K if mode == "mean" else clamp_K
        if value is None:
            raise ValueError(f"mode {mode!r} needs per-latent {'mean_K' if mode == 'mean' else 'clamp_K'} values")
        new = value.to(f_K).expand_as(f_K).clone()
    elif mode == "resample":
        if values_K is None or values_K.shape != f_K.shape:
            raise ValueError(f"mode 'resample' needs values_K shaped like the latents {tuple(f_K.shape)}")
        new = values_K.to(f_K).clone()
    else:
        raise ConfigError("interventions.modes", f"unknown latent mode {mode!r}; allowed: zero, mean, clamp, resample")
    if positions is not None:
        new = torch.where(positions.unsqueeze(-1).to(f_K.device), new, f_K)
    return new


def latent_delta(sae, x: Tensor, latents: Sequence[int], mode: str = "zero", *, f: Tensor | None = None,
                 mean_K: Tensor | None = None, clamp_K: Tensor | None = None, values_K: Tensor | None = None,
                 positions: Tensor | None = None, W_eff: Tensor | None = None) -> Tensor:
    """Change ``[..., d_in]`` of the residual when ``latents`` are edited (error term kept).

    ``f`` (the SAE's latents of ``x``) and ``W_eff`` (``SAEView.decoder_FD()``) can be passed to avoid
    recomputing them.
    """
    view = as_view(sae)
    idx = torch.as_tensor(list(latents), dtype=torch.long)
    if idx.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    if f is None:
        f = view.encode(x)
    W = view.decoder_FD() if W_eff is None else W_eff
    f_K = f[..., idx.to(f.device)]
    change = new_latent_values(f_K, mode, mean_K=mean_K, clamp_K=clamp_K, values_K=values_K, positions=positions) - f_K
    delta = change @ W[idx.to(W.device)].to(change.device)
    scale = view.output_scale(x)
    if scale is not None:
        delta = delta * scale.to(delta.device)
    return delta


def sae_latent_edit(sae, latents: Sequence[int], mode: str = "zero", *, mean_K: Tensor | None = None,
                    clamp_K: Tensor | None = None, positions: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """An ``EditFn`` for :func:`sources.patching.run_with_edits`: encode, edit ``latents``, decode, add the error back."""
    view = as_view(sae)
    W = view.decoder_FD()

    def edit(x: Tensor) -> Tensor:
        return x + latent_delta(view, x, latents, mode, mean_K=mean_K, clamp_K=clamp_K, positions=positions,
                                W_eff=W).to(x.dtype)

    return edit


# ----------------------------------------------------------------------------------- subspace edits

def decoder_basis(W_eff: Tensor, latents: Sequence[int]) -> Tensor:
    """Orthonormal basis ``[D, r]`` (float32) of the span of the decoder rows of ``latents``
    (:meth:`subspaces.Subspace.from_decoder`; r is the numerical rank)."""
    from subspaces import Subspace

    rows = W_eff[list(latents)]
    if not bool((rows.abs() > 0).any()):  # all-zero decoder rows span nothing: the edit is a no-op
        return torch.zeros(W_eff.shape[1], 0, dtype=torch.float32, device=W_eff.device)
    return torch.from_numpy(Subspace.from_decoder(W_eff.cpu(), list(latents)).basis_DK).float().to(W_eff.device)


def random_unit_vector(d: int, rng) -> Tensor:
    """A direction drawn uniformly on the unit sphere of R^d (a Haar-random 1-D :class:`subspaces.Subspace`)."""
    from subspaces import Subspace

    return torch.from_numpy(Subspace.random(d, 1, rng).basis_DK[:, 0]).float()


def _masked(delta: Tensor, positions: Tensor | None) -> Tensor:
    if positions is None:
        return delta
    return delta * positions.unsqueeze(-1).to(delta)


def project_out_delta(x: Tensor, basis_DK: Tensor, positions: Tensor | None = None) -> Tensor:
    """Change that removes the component of ``x`` in the subspace: ``-B B^T x``."""
    B = basis_DK.to(device=x.device, dtype=torch.float32)
    return _masked(-((x.float() @ B) @ B.T), positions)


def mean_project_delta(x: Tensor, basis_DK: Tensor, mu_D: Tensor, positions: Tensor | None = None) -> Tensor:
    """Change that replaces the subspace component of ``x`` by that of the mean ``mu``: ``-B B^T (x - mu)``."""
    B = basis_DK.to(device=x.device, dtype=torch.float32)
    return _masked(-(((x.float() - mu_D.to(x.device).float()) @ B) @ B.T), positions)


def set_coordinates_delta(x: Tensor, basis_DK: Tensor, target_K: Tensor, positions: Tensor | None = None) -> Tensor:
    """Change that sets the subspace coordinates ``B^T x`` to ``target_K``: ``B (c - B^T x)``."""
    B = basis_DK.to(device=x.device, dtype=torch.float32)
    c = target_K.to(device=x.device, dtype=torch.float32)
    return _masked((c - x.float() @ B) @ B.T, positions)


def steer_delta(x: Tensor, v_D: Tensor, alpha: float, positions: Tensor | None = None) -> Tensor:
    """Change ``alpha * v`` (``v`` as given; pass a unit vector for alpha in residual-norm units)."""
    d = (float(alpha) * v_D.to(device=x.device, dtype=torch.float32)).expand(x.shape).clone()
    return _masked(d, positions)


def norm_matched_delta(reference_delta: Tensor, u_D: Tensor) -> Tensor:
    """Random-direction control: at every token, a step along the unit vector ``u`` with the norm of ``reference_delta``."""
    n = reference_delta.float().norm(dim=-1, keepdim=True)
    return n * u_D.to(device=reference_delta.device, dtype=torch.float32)


def norm_matched_span_delta(reference_delta: Tensor, x: Tensor, basis_DK: Tensor) -> Tensor:
    """Random-span control: at every token, the projection out of the span ``basis_DK`` (``-B B^T x``) rescaled to the
    norm of ``reference_delta`` (0 where the reference edits nothing): matched on dimension and on removed norm."""
    n = reference_delta.float().norm(dim=-1, keepdim=True)
    d = project_out_delta(x, basis_DK)
    dn = d.norm(dim=-1, keepdim=True)
    return torch.where(dn > 0, d * (n / dn.clamp_min(torch.finfo(torch.float32).tiny)), torch.zeros_like(d))


def as_edit_fn(delta_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """Wrap ``x -> delta`` as an ``EditFn`` ``x -> x + delta`` in the site's dtype."""

    def edit(x: Tensor) -> Tensor:
        return x + delta_fn(x).to(x.dtype)

    return edit
