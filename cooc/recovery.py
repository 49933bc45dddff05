"""Scoring recovered groups against planted ones (synthetic benchmarks and tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import comb


def labels_from_groups(groups: list, d_sae: int) -> np.ndarray:
    """Cluster label per latent: its group's index, or a unique singleton label when ungrouped."""
    labels = -np.arange(1, d_sae + 1)
    for k, members in enumerate(groups):
        labels[np.asarray(list(members), dtype=np.int64)] = k
    return labels


def adjusted_rand(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings of the same items (Hubert & Arabie 1985)."""
    _, a = np.unique(labels_a, return_inverse=True)
    _, b = np.unique(labels_b, return_inverse=True)
    n = a.shape[0]
    pairs, counts = np.unique(a.astype(np.int64) * (b.max() + 1) + b, return_counts=True)
    sum_ij = comb(counts, 2).sum()
    sum_a = comb(np.bincount(a), 2).sum()
    sum_b = comb(np.bincount(b), 2).sum()
    expected = sum_a * sum_b / comb(n, 2)
    top = 0.5 * (sum_a + sum_b)
    if top == expected:
        return 1.0
    return float((sum_ij - expected) / (top - expected))


def best_match_jaccard(truth: list, found: list) -> np.ndarray:
    """For every planted group, the largest member-set Jaccard with any found group (0 if none)."""
    out = np.zeros(len(truth))
    for k, t in enumerate(truth):
        t = set(t)
        out[k] = max((len(t & set(f)) / len(t | set(f)) for f in found), default=0.0)
    return out


@dataclass
class Recovery:
    """How well found groups match planted ones."""

    ari: float
    mean_best_jaccard: float
    exact: int
    """Planted groups recovered exactly."""
    labels_right: int
    """Planted groups whose best match carries the planted structure label."""
    n_found: int
    largest_found: int


def recovery(truth: list, kinds: list[str], groups: list, d_sae: int) -> Recovery:
    """Compare planted groups (member lists + kinds) with found :class:`cooc.groups.Group` objects."""
    found = [g.members for g in groups]
    best = best_match_jaccard(truth, found)
    right = 0
    for t, kind in zip(truth, kinds):
        if not groups:
            break
        g = max(groups, key=lambda g: len(set(t) & set(g.members)) / len(set(t) | set(g.members)))
        right += g.structure.structure == kind
    ari = adjusted_rand(labels_from_groups(truth, d_sae), labels_from_groups(found, d_sae))
    return Recovery(ari, float(best.mean()) if len(best) else 0.0, int((best == 1.0).sum()), right, len(groups),
                    max((g.size for g in groups), default=0))
