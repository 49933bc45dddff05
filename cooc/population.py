"""Population summaries of one co-occurrence result, for comparing SAEs (a sweep's points) with each other.

How many latents sit in groups of size > 1, how large and of which structure the groups are, and how well they
replicate on held-out documents. Two mining methods are summarised from one counting pass:

``ours``          the groups the stage found (``cooc.method``: FDR-controlled edges with effect floors by default)
``size_capped``   the reference method (Clarke, Bhatnagar & Bloom): one global Jaccard cut over every stored pair,
                  bisected until the largest connected component holds ``min_size``-``max_size`` latents (150-200
                  in the reference); groups are the components of size >= 2. Re-mined here from the saved pair
                  counts, with no significance test and no floors, as the reference does.

The fraction of latents in groups is given over all ``d_sae`` latents, over the latents that fired at least once on
the counted tokens and (ours) over the latents the pair test covered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cooc.groups import Group, GroupFinder
from cooc.result import CoocResult, jaccard_matrix
from cooc.structure import LABELS
from sources.errors import ConfigError

SIZE_BINS = ((2, 2), (3, 4), (5, 8), (9, 16), (17, 64), (65, None))
"""Group-size bins of the size distribution (inclusive; None: no upper bound)."""


def size_bin(size: int) -> str:
    for lo, hi in SIZE_BINS:
        if size >= lo and (hi is None or size <= hi):
            return str(lo) if hi == lo else (f"{lo}-{hi}" if hi is not None else f">={lo}")
    return "1"


@dataclass(frozen=True)
class Population:
    """Who is in a group, for one result and one mining method."""

    method: str
    d_sae: int
    n_alive: int
    """Latents that fired at least once on the counted tokens."""
    l0: float
    """Mean number of latents firing per counted token."""
    groups: tuple[Group, ...] = field(repr=False)
    n_tested: int | None = None
    """Latents the pair test covered (firing at least cooc.min_occurrences times): the latents ``ours`` can group."""
    replication: float | None = None
    """Mean replication rate of the groups' internal edges on held-out documents (ours only; None without it)."""
    cut: float | None = None
    """size_capped: the Jaccard threshold the bisection settled on."""
    converged: bool | None = None
    """size_capped: whether the largest component landed inside [min_size, max_size]."""
    largest_component: int | None = None
    freq_F: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Firing rate of every latent on the counted tokens (for the largest group's median rate)."""

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_grouped(self) -> int:
        return len({m for g in self.groups for m in g.members})

    @property
    def fraction(self) -> float:
        """Share of all d_sae latents that sit in a group of size > 1."""
        return self.n_grouped / self.d_sae if self.d_sae else float("nan")

    @property
    def fraction_alive(self) -> float:
        """Share of the latents that fired at all that sit in a group of size > 1."""
        return self.n_grouped / self.n_alive if self.n_alive else float("nan")

    def row(self) -> dict:
        """One flat row for a table (sizes and structures summarised)."""
        sizes = [g.size for g in self.groups]
        structures = Counter(g.structure.structure for g in self.groups)
        return {"method": self.method, "d_sae": self.d_sae, "n_alive": self.n_alive, "l0": self.l0,
                "n_groups": self.n_groups, "latents_in_groups": self.n_grouped, "fraction_in_groups": self.fraction,
                "fraction_of_alive_in_groups": self.fraction_alive, "n_tested": self.n_tested,
                "fraction_of_tested_in_groups": self.n_grouped / self.n_tested if self.n_tested else None,
                "median_group_size": float(np.median(sizes)) if sizes else float("nan"),
                "largest_group": max(sizes) if sizes else 0,
                "largest_group_median_rate": self._largest_rate(), "replication_rate": self.replication,
                "jaccard_cut": self.cut, "cut_converged": self.converged,
                "largest_component": self.largest_component,
                **{f"structure_{k}": int(structures.get(k, 0)) for k in LABELS}}

    def _largest_rate(self) -> float | None:
        """Median firing rate (per counted token) of the largest group's members: a near-clique of rare latents that
        all fire on the same few tokens looks very different from one of common latents."""
        if self.freq_F is None or not self.groups:
            return None
        biggest = max(self.groups, key=lambda g: (g.size, g.group_id))
        return float(np.median(self.freq_F[list(biggest.members)]))

    def size_distribution(self) -> pd.DataFrame:
        """Groups and latents per size bin (every bin listed, zeros included)."""
        labels = [size_bin(lo) for lo, _ in SIZE_BINS]
        n_groups, n_latents = Counter(), Counter()
        for g in self.groups:
            n_groups[size_bin(g.size)] += 1
            n_latents[size_bin(g.size)] += g.size
        return pd.DataFrame({"method": self.method, "size_bin": labels, "n_groups": [n_groups[b] for b in labels],
                             "n_latents": [n_latents[b] for b in labels]})


def _basics(result: CoocResult) -> tuple[int, int, float, np.ndarray | None]:
    occ = np.asarray(result.occ_F)
    n = result.n_tokens or 0
    return (result.d_sae, int((occ > 0).sum()), float(occ.sum() / n) if n else float("nan"),
            occ / n if n else None)


def ours(result: CoocResult) -> Population:
    """The stage's own groups (groups.csv) as a :class:`Population`."""
    d_sae, alive, l0, freq = _basics(result)
    rates = None
    t = result.groups_table
    if "replication_rate" in t:
        r = t.drop_duplicates("group_id")["replication_rate"].dropna()
        rates = float(r.mean()) if len(r) else None
    tested = result.manifest.get("n_tested_latents")
    return Population("ours", d_sae, alive, l0, tuple(result.groups), replication=rates,
                      n_tested=int(tested) if tested is not None else None, freq_F=freq)


def size_capped(result: CoocResult, min_size: int = 150, max_size: int = 200, iterations: int = 40) -> Population:
    """The reference method's groups, re-mined from the result's pair counts (``counts.npz``): the Jaccard index of
    every stored pair, one global cut bisected until the largest component has ``min_size``-``max_size`` latents."""
    counts = result.pair_counts()
    if counts is None:
        raise ConfigError("cooc", f"{result.folder or 'the co-occurrence result'} has no pair counts (counts.npz); the "
                                  "size-capped cut needs them; rerun the co-occurrence stage")
    upper = sp.triu(jaccard_matrix(counts), k=1).tocoo()
    pairs = pd.DataFrame({"i": upper.row.astype(np.int64), "j": upper.col.astype(np.int64), "jaccard": upper.data})
    finder = GroupFinder("size_target", min_size=min_size, max_size=max_size, iterations=iterations).fit(pairs)
    d_sae, alive, l0, freq = _basics(result)
    return Population("size_capped", d_sae, alive, l0, tuple(finder.groups_), cut=float(finder.cut_),
                      converged=bool(finder.converged_), largest_component=int(finder.largest_component_),
                      freq_F=freq)


def populations(result: CoocResult, min_size: int = 150, max_size: int = 200, iterations: int = 40) -> dict[str, Population]:
    """Both mining methods' populations of one result: ``ours`` and ``size_capped``."""
    return {"ours": ours(result), "size_capped": size_capped(result, min_size, max_size, iterations)}
