"""Controls for a latent group: random subspaces and random size- and firing-frequency-matched latent groups.

Matched groups: latents are binned by firing count into quantile bins (latents with equal counts
always share a bin, so there can be fewer bins than asked for when counts tie, e.g. many dead
latents). For every member of the group a control draws, uniformly and without replacement, a
latent from the member's bin that is not in the group and not already drawn for this control.
Draws are seeded; a group whose bin has too few non-members is an error rather than a silent
cross-bin substitute.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from subspaces.subspace import Subspace


def frequency_bins(counts_F, n_bins: int = 10) -> np.ndarray:
    """Quantile bin (0 = rarest) of every latent's firing count; equal counts share a bin."""
    counts = np.asarray(counts_F, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError("counts_F must be a non-empty 1-D array of firing counts")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    bins = pd.qcut(counts, q=n_bins, labels=False, duplicates="drop")
    return np.asarray(bins, dtype=np.int64)


@dataclass(frozen=True)
class MatchedGroup:
    """A control group: ``latents[i]`` replaces ``group[i]`` and sits in the same frequency bin."""

    group: tuple[int, ...]
    latents: tuple[int, ...]
    bins: tuple[int, ...]
    replicate: int


def matched_groups(group, counts_F, n_controls: int, n_bins: int = 10, seed: int | np.random.Generator = 0,
                   bins_F: np.ndarray | None = None) -> list[MatchedGroup]:
    """``n_controls`` random latent groups matched to ``group`` in size and firing-frequency bin, disjoint from it."""
    group = tuple(int(i) for i in group)
    if len(set(group)) != len(group):
        raise ValueError(f"group has repeated latents: {group}")
    bins = frequency_bins(counts_F, n_bins) if bins_F is None else np.asarray(bins_F)
    n_lat = len(bins)
    if any(not 0 <= i < n_lat for i in group):
        raise ValueError(f"group latents must lie in [0, {n_lat})")
    rng = np.random.default_rng(seed)
    in_group = np.zeros(n_lat, dtype=bool)
    in_group[list(group)] = True
    pools = {}
    for b in sorted({int(bins[i]) for i in group}):
        pool = np.flatnonzero((bins == b) & ~in_group)
        need = sum(1 for i in group if bins[i] == b)
        if len(pool) < need:
            raise ValueError(f"frequency bin {b} has {len(pool)} latents outside the group but {need} are needed; "
                             "use fewer bins")
        pools[b] = pool
    out = []
    for r in range(n_controls):
        draws = {b: iter(rng.choice(pool, size=sum(1 for i in group if bins[i] == b), replace=False).tolist())
                 for b, pool in pools.items()}
        chosen = [int(next(draws[int(bins[i])])) for i in group]
        out.append(MatchedGroup(group, tuple(chosen), tuple(int(bins[j]) for j in chosen), r))
    return out


def random_subspaces(d_model: int, dim: int, n: int, seed: int | np.random.Generator = 0) -> list[Subspace]:
    """``n`` independent Haar-random subspaces of dimension ``dim``."""
    rng = np.random.default_rng(seed)
    return [Subspace.random(d_model, dim, rng, name=f"random{r}") for r in range(n)]
