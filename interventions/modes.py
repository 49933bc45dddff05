"""Ablation modes as a table: one entry per mode says what it edits, what it needs from the pool scan, and how.

An entry's ``delta(ev, arm, ch, positions)`` returns the additive change ``[B, L, D]`` to the residual at the hook
for one arm on one chunk of contexts (:class:`interventions.arms.Chunk`), at ``positions`` only;
``ev`` is the :class:`interventions.arms.Evaluator` (SAE view ``ev.sae``, decoder ``ev.W``, the pool ``ev.pool``,
the config ``ev.icfg``). Adding a mode is one function and one entry of :data:`MODES`; the config's mode names,
the arms the stage plans and what the pool scan keeps all come from this table.

``edits``: ``latents`` (encode, change the arm's latents, decode, keep the SAE error term) or ``subspace`` (edit the
residual in the span of the arm's decoder rows, basis ``arm.basis``). ``needs``: what the pool scan must provide
beyond firing counts: ``pool_latents`` (the latents of every pool token, for ``resample``).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from interventions import edits as E
from sources.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mode:
    name: str
    edits: str
    """latents | subspace"""
    delta: Callable
    needs: frozenset = frozenset()
    doc: str = ""


def _latent(mode: str):
    def delta(ev, arm, ch, positions):
        lat = list(arm.latents)
        return E.latent_delta(ev.sae, ch.x, lat, mode, f=ch.f, mean_K=ev.mean_act[lat], positions=positions, W_eff=ev.W)
    return delta


def _clamp(ev, arm, ch, positions):
    lat = list(arm.latents)
    base = ev.mean_act[lat] if ev.icfg.clamp_units == "mean_activation" else torch.ones(len(lat), device=ev.W.device)
    return E.latent_delta(ev.sae, ch.x, lat, "clamp", f=ch.f, mean_K=ev.mean_act[lat], clamp_K=ev.icfg.clamp_value * base,
                          positions=positions, W_eff=ev.W)


def resample_rows(pool_doc_S: np.ndarray, doc: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Rows ``[n]`` of the pool sample one context's tokens take their latents from: uniform over the sample's tokens of
    other documents than ``doc`` (over all of them, with a warning, when the pool holds that document alone)."""
    cand = np.flatnonzero(pool_doc_S != doc)
    if not len(cand):
        log.warning("resample: the pool holds only document %s; its latents are resampled from its own tokens", doc)
        cand = np.arange(len(pool_doc_S))
    return cand[rng.integers(0, len(cand), size=n)]


def _resample(ev, arm, ch, positions):
    pool = ev.pool
    if pool.sample_latents_SF is None or pool.sample_latents_SF.shape[0] == 0:
        raise ConfigError("interventions.modes", "mode resample needs the pool's latents; the pool scan kept none "
                                                 "(interventions.pool_tokens must be > 0)")
    if ch.doc_index is None or ch.row_keys is None or arm.seed is None:
        raise ValueError("resample needs the chunk's documents and row keys and the arm's seed")
    B, L = ch.x.shape[:2]
    # one generator per context (not per chunk): the draws do not depend on how contexts and arms are batched,
    # and a context's first L draws are the same whatever it is padded to
    rows = np.stack([resample_rows(pool.sample_doc_S, int(d), L, np.random.default_rng(
        [arm.seed, zlib.crc32(arm.name.encode()), zlib.crc32(repr(key).encode())])) for d, key in zip(ch.doc_index, ch.row_keys)])
    lat = list(arm.latents)
    values = pool.sample_latents_SF[rows.ravel()][:, lat].toarray().reshape(B, L, len(lat))
    return E.latent_delta(ev.sae, ch.x, lat, "resample", f=ch.f, values_K=torch.from_numpy(values).float(),
                          positions=positions, W_eff=ev.W)


def _project_out(ev, arm, ch, positions):
    return E.project_out_delta(ch.x, arm.basis, positions)


def _mean_project(ev, arm, ch, positions):
    return E.mean_project_delta(ch.x, arm.basis, ev.pool.mu_D, positions)


MODES: dict[str, Mode] = {m.name: m for m in [
    Mode("zero", "latents", _latent("zero"), doc="the latents are set to 0"),
    Mode("mean", "latents", _latent("mean"),
         doc="each latent is set to its mean activation over the pool tokens where it fires"),
    Mode("clamp", "latents", _clamp, doc="each latent is set to clamp_value (x its mean firing activation)"),
    Mode("resample", "latents", _resample, frozenset({"pool_latents"}),
         doc="the latents take their values at a random pool token of another document (seeded per context)"),
    Mode("project_out", "subspace", _project_out, doc="x - B B^T x"),
    Mode("mean_project", "subspace", _mean_project, doc="x - B B^T (x - mu), mu the pool's mean residual"),
]}

LATENT_MODES = tuple(n for n, m in MODES.items() if m.edits == "latents")


def needs(modes) -> set[str]:
    """What the configured modes need from the pool scan (union of their ``needs``)."""
    return set().union(*(MODES[m].needs for m in modes))
