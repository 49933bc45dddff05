"""Groups of two SAEs of one model and hook matched by decoder direction: which persist, split or vanish.

Feature splitting (Bricken et al.; Clarke, Bhatnagar & Bloom for groups): as an SAE grows, a latent's direction is
shared out among several narrower latents. To follow a group from a narrower SAE A to a wider SAE B:

1. every member ``b`` of a group of B gets a *parent*: the latent of A (any latent, not only group members) with the
   largest cosine between unit decoder rows, kept when that cosine is >= ``min_cosine``;
2. a group G_B *descends* from a group G_A when at least ``min_share`` of G_B's members have their parent in G_A;
3. a group of A then **persists** (one descendant group in B), **splits** (two or more) or **vanishes** (none);
   a group of B with no ancestor is **new**.

The decoder rows are the directions a latent writes; two SAEs trained on the same activations are compared in the
same space, so no alignment is needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

FATES = ("persists", "splits", "vanishes")


def unit_rows(W_FD) -> torch.Tensor:
    W = torch.as_tensor(np.asarray(W_FD) if not isinstance(W_FD, torch.Tensor) else W_FD).detach().float().cpu()
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


def parents(dec_a_FD, dec_b_FD, latents_b, min_cosine: float = 0.7, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each latent of B in ``latents_b``: its nearest latent of A by decoder cosine (-1 where the cosine is below
    ``min_cosine``) and that cosine."""
    A, B = unit_rows(dec_a_FD), unit_rows(dec_b_FD)
    idx = torch.as_tensor(np.asarray(latents_b, dtype=np.int64))
    best = np.empty(idx.shape[0], dtype=np.int64)
    cos = np.empty(idx.shape[0], dtype=np.float64)
    for s in range(0, idx.shape[0], chunk):
        sims = B[idx[s:s + chunk]] @ A.T
        c, a = sims.max(dim=1)
        best[s:s + chunk], cos[s:s + chunk] = a.numpy(), c.double().numpy()
    return np.where(cos >= min_cosine, best, -1), cos


def match_groups(dec_a_FD, groups_a: dict[str, tuple[int, ...]], dec_b_FD, groups_b: dict[str, tuple[int, ...]],
                 min_cosine: float = 0.7, min_share: float = 0.5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(links, fates) from the groups of SAE A to those of SAE B (see the module doc).

    ``links``: one row per (group of A, group of B) pair where B's group descends from A's: ``group_a``,
    ``group_b``, ``share`` (of B's members whose parent is in A's group), ``mean_cosine`` (of those members to
    their parents). ``fates``: one row per group of A (``side`` "a": fate persists/splits/vanishes, with
    ``n_descendants`` and the descendants' ids) and per group of B without an ancestor (``side`` "b", fate "new").
    """
    group_of_a = {int(m): g for g, members in groups_a.items() for m in members}
    members_b = sorted({int(m) for ms in groups_b.values() for m in ms})
    parent, cos = parents(dec_a_FD, dec_b_FD, members_b, min_cosine)
    parent_of = dict(zip(members_b, parent.tolist()))
    cos_of = dict(zip(members_b, cos.tolist()))
    links = []
    for gb, ms in groups_b.items():
        owners = pd.Series([group_of_a.get(parent_of[int(m)]) for m in ms], dtype=object)
        for ga, n in owners.dropna().value_counts().items():
            share = n / len(ms)
            if share >= min_share:
                inside = [cos_of[int(m)] for m in ms if group_of_a.get(parent_of[int(m)]) == ga]
                links.append({"group_a": ga, "group_b": gb, "size_a": len(groups_a[ga]), "size_b": len(ms),
                              "share": share, "mean_cosine": float(np.mean(inside))})
    links = pd.DataFrame(links, columns=["group_a", "group_b", "size_a", "size_b", "share", "mean_cosine"])
    rows = []
    for ga, ms in groups_a.items():
        kids = sorted(links.loc[links["group_a"] == ga, "group_b"])
        fate = "vanishes" if not kids else ("persists" if len(kids) == 1 else "splits")
        rows.append({"side": "a", "group": ga, "size": len(ms), "fate": fate, "n_descendants": len(kids),
                     "descendants": " ".join(kids)})
    descended = set(links["group_b"])
    for gb, ms in groups_b.items():
        if gb not in descended:
            rows.append({"side": "b", "group": gb, "size": len(ms), "fate": "new", "n_descendants": 0,
                         "descendants": ""})
    return links, pd.DataFrame(rows, columns=["side", "group", "size", "fate", "n_descendants", "descendants"])
