"""The interventions a notebook needs, on a :class:`sources.session.Session` (see docs/api.md).

Each function takes the session (model, SAE and hook), tokens ``[B, L]`` and what to edit, and returns the
edited model's logits ``[B, L, V]`` (float32). Edits act at the session's hook only, at ``positions`` (a bool
``[B, L]`` mask; None: every position). :func:`evaluate_groups` runs the whole comparison of the interventions
stage (groups vs their best single latent vs matched controls, with document-bootstrap intervals) without a run
folder.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from interventions import edits as E
from interventions.config import InterventionsConfig
from sources.patching import run_with_site_edit


def _tokens(tokens_BL) -> torch.Tensor:
    t = torch.as_tensor(tokens_BL)
    return t[None] if t.ndim == 1 else t


def ablate(session, tokens_BL, latents: Sequence[int], mode: str = "zero", *, value: float | Sequence[float] | None = None,
           positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits with the SAE ``latents`` edited at the hook, the SAE's error term kept.

    ``mode``: ``zero``; ``clamp`` (every latent set to ``value``, a number or one per latent); ``mean`` (every
    latent set to ``value``, e.g. its mean firing activation). The residual changes by exactly
    ``sum_i (f'_i - f_i) W_dec[i]`` (the decoder as the SAE applies it).
    """
    lat = list(latents)
    kw = {}
    if mode in ("clamp", "mean"):
        if value is None:
            raise ValueError(f"mode {mode!r} needs value= (a number, or one per latent)")
        v = torch.as_tensor(value, dtype=torch.float32).expand(len(lat)).clone()
        kw = {"clamp_K": v} if mode == "clamp" else {"mean_K": v}
    elif mode != "zero":
        raise ValueError(f"ablate supports zero, clamp and mean; got {mode!r} (resample needs a pool: evaluate_groups)")
    edit = E.sae_latent_edit(session.sae, lat, mode, positions=positions, **kw)
    return run_with_site_edit(session.model, _tokens(tokens_BL), session.hook, edit)


def project_out(session, tokens_BL, latents: Sequence[int], *, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits with the span of the ``latents``' decoder rows removed from the residual at the hook (x - B B^T x)."""
    B = E.decoder_basis(session.view().decoder_FD(), list(latents))
    return run_with_site_edit(session.model, _tokens(tokens_BL), session.hook,
                              E.as_edit_fn(lambda x: E.project_out_delta(x, B, positions)))


def steer(session, tokens_BL, direction_D, alpha: float, *, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Logits with ``alpha * direction`` added to the residual at the hook (give a unit direction for alpha in
    residual-norm units, e.g. ``subspaces.reconstruction_pca(...).subspace.basis_DK[:, 0]``)."""
    v = torch.as_tensor(np.asarray(direction_D), dtype=torch.float32)
    return run_with_site_edit(session.model, _tokens(tokens_BL), session.hook,
                              E.as_edit_fn(lambda x: E.steer_delta(x, v, alpha, positions)))


def evaluate_groups(session, groups: dict[str, Sequence[int]], icfg: InterventionsConfig | dict | None = None, *,
                    threshold: float = 0.0, seed: int = 0, progress: bool = False):
    """The interventions stage's comparison for ``groups`` (id -> latents) on the session's corpus.

    Returns :class:`interventions.pipeline.InterventionsResult` (``effects``, ``verdicts``, ``effect_verdicts``,
    ``arms``). ``icfg``: an :class:`InterventionsConfig` or a dict of its fields (default: the stage's defaults);
    ``threshold``: the firing threshold (+ the SAE's JumpReLU θ) that says where a group fires.
    """
    from interventions.arms import GroupSpec
    from interventions.pipeline import run_interventions

    icfg = icfg if isinstance(icfg, InterventionsConfig) else InterventionsConfig.model_validate(icfg or {})
    specs = [GroupSpec(str(g), tuple(int(m) for m in members)) for g, members in groups.items()]
    view = session.view(threshold)
    return run_interventions(session, specs, icfg, view.threshold_F, seed=seed, progress=progress)
