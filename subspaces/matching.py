"""Groups of two SAEs of one model and hook matched by decoder direction: which persist, split, dissolve or vanish.

Feature splitting (Bricken et al.; Clarke, Bhatnagar & Bloom for groups): as an SAE grows, a latent's direction is
shared out among several narrower latents. To follow a group from a narrower SAE A to a wider SAE B:

1. every latent ``b`` of B gets a *parent*: the latent of A (any latent, not only group members) with the largest
   cosine between unit decoder rows, kept when that cosine is >= ``min_cosine``;
2. a group G_B has at most one *ancestor*: the group G_A holding the largest share of G_B's members' parents, when
   that share is >= ``min_share`` (ties go to the larger count, then the smaller group id);
3. a group of A then **persists** (one descendant group in B), **splits** (two or more), **dissolves** (none, but
   some of its members are parents of latents of B: its directions survive outside any group) or **vanishes**
   (none of its members is anyone's parent); a group of B without an ancestor is **new**.

The decoder rows are the directions a latent writes; two SAEs trained at the same site decode into the same space, so
no alignment is needed (:func:`match_groups` refuses decoders of different widths d_in).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

FATES = ("persists", "splits", "dissolves", "vanishes", "new")
LINK_COLUMNS = ["group_a", "group_b", "size_a", "size_b", "share", "coverage", "mean_cosine"]
FATE_COLUMNS = ["side", "group", "size", "fate", "n_descendants", "descendants"]


def unit_rows(W_FD) -> torch.Tensor:
    W = torch.as_tensor(np.asarray(W_FD) if not isinstance(W_FD, torch.Tensor) else W_FD).detach().float().cpu()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def parents(dec_a_FD, dec_b_FD, latents_b=None, min_cosine: float = 0.7, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each latent of B in ``latents_b`` (default: all): its nearest latent of A by decoder cosine (-1 where the
    cosine is below ``min_cosine``) and that cosine."""
    A, B = unit_rows(dec_a_FD), unit_rows(dec_b_FD)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"decoders of width {A.shape[1]} and {B.shape[1]} do not share a space")
    idx = torch.arange(B.shape[0]) if latents_b is None else torch.as_tensor(np.asarray(latents_b, dtype=np.int64))
    best = np.empty(idx.shape[0], dtype=np.int64)
    cos = np.empty(idx.shape[0], dtype=np.float64)
    for s in range(0, idx.shape[0], chunk):
        c, a = (B[idx[s:s + chunk]] @ A.T).max(dim=1)
        best[s:s + chunk], cos[s:s + chunk] = a.numpy(), c.double().numpy()
    return np.where(cos >= min_cosine, best, -1), cos


def match_groups(dec_a_FD, groups_a: dict[str, tuple[int, ...]], dec_b_FD, groups_b: dict[str, tuple[int, ...]],
                 min_cosine: float = 0.7, min_share: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(links, fates) from the groups of SAE A to those of SAE B (see the module doc).

    ``links``: one row per group of B that has an ancestor: ``group_a``, ``group_b``, ``share`` (of B's members whose
    parent is in A's group), ``coverage`` (of A's members that are the parent of a member of B's group),
    ``mean_cosine`` (of those members of B to their parents). ``fates``: one row per group of A (``side`` "a": persists,
    splits, dissolves or vanishes, with ``n_descendants`` and the descendants' ids) and per group of B without an
    ancestor (``side`` "b", fate "new").
    """
    group_of_a = {int(m): g for g, members in groups_a.items() for m in members}
    parent, cos = parents(dec_a_FD, dec_b_FD, None, min_cosine)
    links = []
    for gb, ms in groups_b.items():
        ms = [int(m) for m in ms]
        owners = pd.Series([group_of_a.get(int(parent[m])) for m in ms], dtype=object).dropna()
        if owners.empty:
            continue
        counts = owners.value_counts()
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        ga, n = top
        if n / len(ms) < min_share:
            continue
        inside = [m for m in ms if group_of_a.get(int(parent[m])) == ga]
        covered = {int(parent[m]) for m in inside}
        links.append({"group_a": ga, "group_b": gb, "size_a": len(groups_a[ga]), "size_b": len(ms),
                      "share": n / len(ms), "coverage": len(covered) / len(groups_a[ga]),
                      "mean_cosine": float(np.mean([cos[m] for m in inside]))})
    links = pd.DataFrame(links, columns=LINK_COLUMNS)
    is_parent = set(parent[parent >= 0].tolist())
    rows = []
    for ga, ms in groups_a.items():
        kids = sorted(links.loc[links["group_a"] == ga, "group_b"])
        if kids:
            fate = "persists" if len(kids) == 1 else "splits"
        else:
            fate = "dissolves" if any(int(m) in is_parent for m in ms) else "vanishes"
        rows.append({"side": "a", "group": ga, "size": len(ms), "fate": fate, "n_descendants": len(kids),
                     "descendants": " ".join(kids)})
    descended = set(links["group_b"])
    for gb, ms in groups_b.items():
        if gb not in descended:
            rows.append({"side": "b", "group": gb, "size": len(ms), "fate": "new", "n_descendants": 0,
                         "descendants": ""})
    return links, pd.DataFrame(rows, columns=FATE_COLUMNS)
