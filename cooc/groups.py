"""Groups of co-occurring latents from scored pairs.

``method="significant"`` (default): an edge joins i and j when the pair is significant after
Benjamini-Hochberg (p_adj < alpha) *and* clears the effect floors (count >= min_count,
Jaccard >= min_jaccard, NPMI >= min_npmi, co-firing in >= min_documents documents where documents are known). Groups are connected components of the edge graph;
a component larger than ``max_group_size`` is split by Louvain community detection (Jaccard
weights, fixed seed); a part Louvain cannot split is cut locally at the smallest Jaccard
threshold that disconnects it. Splitting repeats until every part fits; parts are connected,
single latents left over are not groups. Nothing is ever merged. (A component whose edges all
have the same Jaccard cannot be cut without shattering it; it is kept whole, with a warning.)

``method="size_target"``: the reference algorithm. One global Jaccard threshold t is bisected
on [0, 1] until the largest connected component of {pairs with Jaccard > t} has between
``min_size`` and ``max_size`` latents; groups are the components (size >= 2) at that t.

Group ids are ``"g" + stable_hash(sorted members)``: the same latents give the same id in
every run and config.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from cooc.structure import Structure, describe
from sources.files import stable_hash

log = logging.getLogger(__name__)

GROUP_COLUMNS = ["latent", "group_id", "group_size", "structure", "n_edges", "density",
                 "degree_centralisation", "clustering", "diameter"]


def group_id(members) -> str:
    """Stable id of a set of latents: 'g' + 10 hex digits of the hash of the sorted member list."""
    return "g" + stable_hash(sorted(int(m) for m in members), n=10)


@dataclass(frozen=True)
class Group:
    """One group: id, sorted member latents and the shape of its edge graph."""

    group_id: str
    members: tuple[int, ...]
    structure: Structure

    @property
    def size(self) -> int:
        return len(self.members)


def components(i: np.ndarray, j: np.ndarray) -> list[np.ndarray]:
    """Connected components (size >= 2, sorted node ids) of the graph with edges (i, j)."""
    if i.shape[0] == 0:
        return []
    nodes, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
    k = nodes.shape[0]
    adj = sp.coo_matrix((np.ones(i.shape[0]), (inv[: i.shape[0]], inv[i.shape[0]:])), shape=(k, k))
    _, lab = connected_components(adj, directed=False)
    order = np.argsort(lab, kind="stable")
    cuts = np.flatnonzero(np.diff(lab[order])) + 1
    return [nodes[np.sort(part)] for part in np.split(order, cuts) if part.shape[0] >= 2]


def largest_component(i: np.ndarray, j: np.ndarray) -> int:
    """Size of the largest connected component (0 without edges)."""
    if i.shape[0] == 0:
        return 0
    nodes, inv = np.unique(np.concatenate([i, j]), return_inverse=True)
    k = nodes.shape[0]
    adj = sp.coo_matrix((np.ones(i.shape[0]), (inv[: i.shape[0]], inv[i.shape[0]:])), shape=(k, k))
    _, lab = connected_components(adj, directed=False)
    return int(np.bincount(lab).max())


def _local_cut(graph: nx.Graph) -> list[set]:
    """Split a connected graph at the smallest Jaccard threshold that disconnects it."""
    weights = np.unique([w for _, _, w in graph.edges(data="jaccard")])
    lo, hi = 0, weights.shape[0] - 1  # removing edges with weight <= weights[hi] always disconnects
    while lo < hi:
        mid = (lo + hi) // 2
        kept = nx.Graph([(u, v) for u, v, w in graph.edges(data="jaccard") if w > weights[mid]])
        kept.add_nodes_from(graph)
        if nx.number_connected_components(kept) > 1:
            hi = mid
        else:
            lo = mid + 1
    kept = nx.Graph([(u, v) for u, v, w in graph.edges(data="jaccard") if w > weights[lo]])
    kept.add_nodes_from(graph)
    return [set(c) for c in nx.connected_components(kept)]


def split_component(graph: nx.Graph, max_size: int, seed: int, resolution: float = 1.0) -> list[set]:
    """Split a connected graph into connected parts of at most ``max_size`` nodes."""
    out, stack = [], [set(graph)]
    while stack:
        nodes = stack.pop()
        if len(nodes) <= max_size:
            out.append(nodes)
            continue
        sub = graph.subgraph(sorted(nodes))
        parts = nx.community.louvain_communities(sub, weight="jaccard", seed=seed, resolution=resolution)
        parts = [set(c) for p in parts for c in nx.connected_components(sub.subgraph(p))]
        if len(parts) == 1:
            parts = _local_cut(sub)
        if max(len(p) for p in parts) < 2:
            log.warning("group of %d latents cannot be split (all its edges are equally strong); kept whole "
                        "above max_group_size=%d", len(nodes), max_size)
            out.append(nodes)
            continue
        stack.extend(sorted(parts, key=min))
    return [p for p in out if len(p) >= 2]


class GroupFinder:
    """Find latent groups in a scored pairs table (see the module doc for the two methods).

    After :meth:`fit`: ``groups_`` (list of :class:`Group`, largest first), ``edge_mask_``
    (bool per row of the scored table), ``cut_`` (size_target's Jaccard threshold, else None),
    ``converged_`` (size_target landed in [min_size, max_size]), ``largest_component_``.
    """

    def __init__(self, method: str = "significant", alpha: float = 0.05, min_count: int = 5,
                 min_jaccard: float = 0.01, min_npmi: float = 0.1, max_group_size: int = 64,
                 min_size: int = 150, max_size: int = 200, iterations: int = 40, seed: int = 0,
                 min_documents: int = 1, resolution: float = 1.0):
        if method not in ("significant", "size_target"):
            raise ValueError(f"unknown method {method!r}")
        self.method, self.alpha, self.min_count = method, alpha, min_count
        self.min_jaccard, self.min_npmi, self.max_group_size = min_jaccard, min_npmi, max_group_size
        self.min_size, self.max_size, self.iterations, self.seed = min_size, max_size, iterations, seed
        self.min_documents, self.resolution = min_documents, resolution

    @classmethod
    def from_config(cls, cfg, seed: int = 0) -> "GroupFinder":
        """Build from a :class:`cooc.config.CoocConfig`."""
        st = cfg.size_target
        return cls(cfg.method, cfg.alpha, cfg.min_count, cfg.min_jaccard, cfg.min_npmi, cfg.max_group_size,
                   st.min_size, st.max_size, st.iterations, seed, cfg.min_documents)

    def fit(self, scored: pd.DataFrame) -> "GroupFinder":
        i, j = scored["i"].to_numpy(), scored["j"].to_numpy()
        jac = scored["jaccard"].to_numpy()
        self.cut_, self.converged_ = None, True
        if self.method == "significant":
            mask = ((scored["p_adj"].to_numpy() < self.alpha) & (scored["count"].to_numpy() >= self.min_count)
                    & (jac >= self.min_jaccard) & (scored["npmi"].to_numpy() >= self.min_npmi))
            if "documents" in scored:  # -1: no document ids, no floor
                docs = scored["documents"].to_numpy()
                mask &= (docs < 0) | (docs >= self.min_documents)
        else:
            self.cut_, self.converged_ = self._bisect(i, j, jac)
            mask = jac > self.cut_
        self.edge_mask_ = mask
        graph = nx.Graph()
        graph.add_weighted_edges_from(zip(i[mask].tolist(), j[mask].tolist(), jac[mask].tolist()), weight="jaccard")
        parts: list[set] = []
        for comp in components(i[mask], j[mask]):
            if self.method == "significant" and comp.shape[0] > self.max_group_size:
                parts.extend(split_component(graph.subgraph(comp.tolist()), self.max_group_size, self.seed, self.resolution))
            else:
                parts.append(set(comp.tolist()))
        self.largest_component_ = largest_component(i[mask], j[mask])
        groups = []
        for p in parts:
            members = tuple(sorted(p))
            groups.append(Group(group_id(members), members, describe(graph.subgraph(members))))
        self.groups_ = sorted(groups, key=lambda g: (-g.size, g.group_id))
        return self

    def _bisect(self, i: np.ndarray, j: np.ndarray, jac: np.ndarray) -> tuple[float, bool]:
        lo, hi = 0.0, 1.0
        t = 0.5
        for _ in range(self.iterations):
            t = (lo + hi) / 2
            keep = jac > t
            size = largest_component(i[keep], j[keep])
            if size > self.max_size:
                lo = t
            elif size < self.min_size:
                hi = t
            else:
                return t, True
        log.warning("size_target: no Jaccard cut puts the largest component in [%d, %d]; using t=%.4g "
                    "(largest component %d)", self.min_size, self.max_size, t, size)
        return t, False


def internal_edges(table: pd.DataFrame, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """For each pair (i[k], j[k]), the id of the group holding both latents (a groups_frame table), else None."""
    group_of = dict(zip(table["latent"].astype(int), table["group_id"]))
    gi = np.array([group_of.get(int(a)) for a in i], dtype=object)
    gj = np.array([group_of.get(int(b)) for b in j], dtype=object)
    return np.where(gi == gj, gi, None)


def groups_frame(groups: list[Group]) -> pd.DataFrame:
    """One row per member latent: GROUP_COLUMNS, ordered by group size (desc), id, latent."""
    rows = []
    for g in groups:
        s = g.structure
        for latent in g.members:
            rows.append((latent, g.group_id, g.size, s.structure, s.n_edges, s.density,
                         s.degree_centralisation, s.clustering, s.diameter))
    return pd.DataFrame(rows, columns=GROUP_COLUMNS).astype({"latent": np.int64, "group_size": np.int64,
                                                             "n_edges": np.int64, "diameter": np.int64})
