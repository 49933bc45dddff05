"""Controls for a latent group: random subspaces, random size- and firing-frequency-matched latent groups, and
random enrichment-matched groups of latents that do not co-occur with each other.

Matched groups: latents are binned by firing count into quantile bins (latents with equal counts
always share a bin, so there can be fewer bins than asked for when counts tie, e.g. many dead
latents). For every member of the group a control draws, uniformly and without replacement, a
latent from the member's bin that is not in the group and not already drawn for this control.
Draws are seeded; a group whose bin has too few non-members is an error rather than a silent
cross-bin substitute.

Enrichment-matched groups (:func:`enrichment_matched_groups`) answer "is it the grouping, or only that the
members fire on the task's tokens?": each member is replaced by a random non-member among the ``pool`` latents
nearest to it in (log(1 + firings on the task tokens), log(1 + firings on the other tokens of the same text)),
which is what the group was selected for (its enrichment on the task tokens); a draw never takes two latents that
co-occur with each other or with a member (an edge of the co-occurrence graph, or members of one co-occurrence
group), so the control is as
task-selective as the group but is not a group.
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


def enrichment_matched_groups(group, task_fires_F, other_fires_F, n_controls: int, seed: int | np.random.Generator = 0,
                              linked=None, pool: int = 20, eligible_F: np.ndarray | None = None) -> list[MatchedGroup]:
    """``n_controls`` random groups matched to ``group`` member by member on task and other-token firing counts.

    For member m, the candidates are the ``pool`` non-members closest to m in
    ``(log1p(task_fires), log1p(other_fires))`` (Euclidean; ties broken at random). A draw visits the members in
    random order and takes, for each, a random candidate that is not already drawn and not ``linked`` to a latent
    already drawn or to a member (``linked``: a set of ``(i, j)`` pairs with i < j, e.g. co-occurrence edges), so a
    control can be combined with a member (the best member plus k - 1 controls) without co-occurring; when every candidate
    is excluded the next-nearest latents are tried. ``eligible_F`` (bool, optional) restricts the candidates (e.g. to
    latents that fire on the task's tokens at all). ``bins`` of the result hold each control's rank among its
    member's candidates (0 = nearest).
    """
    group = tuple(int(i) for i in group)
    if len(set(group)) != len(group):
        raise ValueError(f"group has repeated latents: {group}")
    t = np.log1p(np.asarray(task_fires_F, dtype=np.float64))
    o = np.log1p(np.asarray(other_fires_F, dtype=np.float64))
    n_lat = len(t)
    if o.shape != t.shape or any(not 0 <= i < n_lat for i in group):
        raise ValueError(f"task_fires_F and other_fires_F must have one entry per latent and the group must lie in [0, {n_lat})")
    if n_lat - len(group) < len(group):
        raise ValueError(f"only {n_lat - len(group)} latents outside the group; need {len(group)}")
    rng = np.random.default_rng(seed)
    linked = set() if linked is None else linked
    outside = np.ones(n_lat, dtype=bool) if eligible_F is None else np.asarray(eligible_F, dtype=bool).copy()
    outside[list(group)] = False
    if outside.sum() < len(group):
        raise ValueError(f"only {int(outside.sum())} eligible latents outside the group; need {len(group)}")
    cand = np.flatnonzero(outside)
    jitter = rng.random(len(cand)) * 1e-9
    order = {m: cand[np.argsort((t[cand] - t[m]) ** 2 + (o[cand] - o[m]) ** 2 + jitter, kind="stable")] for m in group}
    out = []
    for r in range(n_controls):
        chosen: dict[int, tuple[int, int]] = {}
        taken: set[int] = set()
        for idx in rng.permutation(len(group)):
            m = group[idx]
            ranked = order[m]
            start = 0
            pick = None
            while pick is None and start < len(ranked):
                window = ranked[start:start + pool]
                for c in rng.permutation(len(window)):
                    j = int(window[c])
                    if j in taken or any((min(j, q), max(j, q)) in linked for q in taken) or \
                            any((min(j, q), max(j, q)) in linked for q in group):
                        continue
                    pick = (j, start + int(c))
                    break
                start += pool
            if pick is None:
                raise ValueError(f"no latent left to match member {m} without repeating or linking latents")
            chosen[idx] = pick
            taken.add(pick[0])
        out.append(MatchedGroup(group, tuple(chosen[i][0] for i in range(len(group))),
                                tuple(chosen[i][1] for i in range(len(group))), r))
    return out
