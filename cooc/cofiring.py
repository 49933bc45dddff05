"""Structure of a group from how its members co-fire, beside the shape of its edge graph (cooc.structure).

The edge graph says which pairs co-occur above chance; it cannot tell a hub whose spokes exclude each other
(composition: one feature refined by mutually exclusive others) from a hub whose spokes fire together, nor a
parent from its child. A second pass over the discovery tokens, restricted to the grouped latents, measures per
group (:class:`GroupCofiring`; exact sums, dense per group):

* ``coactive_mean``: members active per token on which any member fires (1 for mutually exclusive members, the
  group size for members that always fire together).
* ``spoke_cofiring``: with the hub h (the member of highest degree in the edge graph; ties: the most frequent),
  observed over expected co-firing of spoke pairs on the tokens where h fires, Σ_{s<t} c_st|h / Σ_{s<t} c_hs c_ht
  / n_h. About 0 when the spokes exclude each other given the hub, 1 when they are independent given it, above 1
  when they fire together (alternatives active at once, as in ambiguity). NaN for fewer than 3 members.
* ``asymmetry``: over the group's edges, the largest P(j|i) − P(i|j) (P(j|i) = c_ij / n_i), with the pair's
  ``p_parent_given_child`` = max(P(j|i), P(i|j)) and ``p_child_given_parent`` = min: a parent/child pair (as in
  feature absorption) has the first near 1 and the second small.
* ``activation_split``: over the group's edges, the median of r_ij over both orders (i, j) and (j, i), where r_ij
  is latent i's mean activation on the tokens where j also fires over its mean activation where i fires without j
  (left out where i never fires without j, as a child that only fires with its parent). Latents at about half
  strength when they co-fire (activation splitting) give about 0.5; magnitudes that do not depend on the partner
  give 1.

Labels (:func:`cofiring_label`), checked in this order, with the graph metrics of cooc.structure:

* ``parent_child``: 2 members, p_parent_given_child >= PARENT_MIN (0.8) and p_child_given_parent <= CHILD_MAX (0.5)
* ``pair``: any other 2-member group
* ``chain``: the edge graph is a path
* ``hub_spoke``: the hub is adjacent to every other member and its spokes exclude each other given it
  (spoke_cofiring <= SPOKE_EXCLUSIVE_MAX, 0.5): a hub with mutually exclusive spokes, whatever edges noise adds
  among the spokes; without co-firing statistics, degree centralisation >= 0.7 (the topological rule)
* ``clique``: density >= 0.9, or density >= 0.5 with spokes that co-fire at least as often as independent given
  the hub (spoke_cofiring >= 1): a near-clique of alternatives
* ``mixed``: anything else
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd

from cooc.counting import check_csr
from cooc.structure import CLIQUE_MIN_DENSITY, HUB_MIN_CENTRALISATION, Structure
from sources.sae_view import firing_threshold

PARENT_MIN = 0.8
CHILD_MAX = 0.5
SPOKE_EXCLUSIVE_MAX = 0.5
NEAR_CLIQUE_MIN_DENSITY = 0.5
LABELS = ("parent_child", "pair", "chain", "hub_spoke", "clique", "mixed")
COFIRING_COLUMNS = ["topology", "hub", "coactive_mean", "spoke_cofiring", "asymmetry", "p_parent_given_child",
                    "p_child_given_parent", "activation_split"]
"""Columns the co-firing pass adds to groups.csv (``topology``: the graph-only label of cooc.structure;
``structure`` becomes the label of :func:`cofiring_label`)."""


@dataclass
class _Sums:
    """Exact sums over the counted tokens for one group's members (dense, members x members)."""

    n: np.ndarray  # tokens each member fires on
    act: np.ndarray  # summed activation of each member where it fires
    co: np.ndarray  # co[i, j]: tokens where i and j both fire
    co_act: np.ndarray  # co_act[i, j]: summed activation of i where i and j both fire
    hub_co: np.ndarray  # hub_co[s, t]: tokens where the hub, s and t all fire
    any_tokens: int = 0
    active_sum: int = 0


@dataclass
class GroupCofiring:
    """Accumulates, per group, the co-firing sums of its members over latent chunks (``update``), then
    ``metrics(group_id, edges)``.

    ``groups``: group id -> (sorted member latents, hub latent). Fires when activation > max(threshold, θ_F), the
    counter's rule.
    """

    groups: dict[str, tuple[tuple[int, ...], int]]
    threshold: float = 0.0
    theta_F: np.ndarray | None = None
    sums: dict[str, _Sums] = field(default_factory=dict)

    def __post_init__(self):
        self._latents = np.array(sorted({m for ms, _ in self.groups.values() for m in ms}), dtype=np.int64)
        self._cols = {g: np.searchsorted(self._latents, np.asarray(ms, dtype=np.int64)) for g, (ms, _) in self.groups.items()}
        self._hub = {g: list(ms).index(h) for g, (ms, h) in self.groups.items()}
        for g, (ms, _) in self.groups.items():
            k = len(ms)
            self.sums[g] = _Sums(np.zeros(k), np.zeros(k), np.zeros((k, k)), np.zeros((k, k)), np.zeros((k, k)))

    def update(self, latents_TF) -> "GroupCofiring":
        """Add a chunk of activations (CSR [tokens, d_sae], or an object with ``.latents``)."""
        latents_TF = check_csr(getattr(latents_TF, "latents", latents_TF), None)
        if not len(self._latents) or latents_TF.shape[0] == 0:
            return self
        X = latents_TF[:, self._latents].toarray().astype(np.float64)
        thr = firing_threshold(self.threshold, None if self.theta_F is None else self.theta_F[self._latents])
        B = X > np.broadcast_to(np.asarray(thr, dtype=np.float64), X.shape[1:])
        A = np.where(B, X, 0.0)
        Bf = B.astype(np.float64)
        for g, cols in self._cols.items():
            b, a, s = Bf[:, cols], A[:, cols], self.sums[g]
            k_T = b.sum(1)
            s.any_tokens += int((k_T > 0).sum())
            s.active_sum += int(k_T.sum())
            s.n += b.sum(0)
            s.act += a.sum(0)
            s.co += b.T @ b
            s.co_act += a.T @ b
            on = b[:, self._hub[g]] > 0
            if on.any():
                s.hub_co += b[on].T @ b[on]
        return self

    def merge(self, other: "GroupCofiring") -> "GroupCofiring":
        """Add another accumulator's sums (the same groups; e.g. another rank's)."""
        for g, s in self.sums.items():
            o = other.sums[g]
            for name in ("n", "act", "co", "co_act", "hub_co"):
                setattr(s, name, getattr(s, name) + getattr(o, name))
            s.any_tokens += o.any_tokens
            s.active_sum += o.active_sum
        return self

    def metrics(self, g: str, edges: list[tuple[int, int]]) -> dict:
        """COFIRING_COLUMNS but topology for group ``g``; ``edges`` its edge graph's pairs (latent ids)."""
        members, hub = self.groups[g]
        s = self.sums[g]
        pos = {m: k for k, m in enumerate(members)}
        h = pos[hub]
        out = {"hub": int(hub), "coactive_mean": s.active_sum / s.any_tokens if s.any_tokens else float("nan")}
        spokes = [k for k in range(len(members)) if k != h]
        if len(spokes) >= 2 and s.hub_co[h, h] > 0:
            obs = exp = 0.0
            for x in range(len(spokes)):
                for y in range(x + 1, len(spokes)):
                    a, b = spokes[x], spokes[y]
                    obs += s.hub_co[a, b]
                    exp += s.hub_co[a, a] * s.hub_co[b, b] / s.hub_co[h, h]
            out["spoke_cofiring"] = obs / exp if exp > 0 else float("nan")
        else:
            out["spoke_cofiring"] = float("nan")
        best, hi, lo, splits = -1.0, float("nan"), float("nan"), []
        for i, j in edges:
            a, b = pos[int(i)], pos[int(j)]
            c = s.co[a, b]
            if c <= 0 or s.n[a] <= 0 or s.n[b] <= 0:
                continue
            p_ba, p_ab = c / s.n[a], c / s.n[b]  # P(b | a), P(a | b)
            if abs(p_ba - p_ab) > best:
                best, hi, lo = abs(p_ba - p_ab), max(p_ba, p_ab), min(p_ba, p_ab)
            for x, y in ((a, b), (b, a)):
                alone = s.n[x] - s.co[x, y]
                if alone > 0 and s.act[x] - s.co_act[x, y] > 0:
                    splits.append(float((s.co_act[x, y] / s.co[x, y]) / ((s.act[x] - s.co_act[x, y]) / alone)))
        out.update(asymmetry=best if best >= 0 else float("nan"), p_parent_given_child=hi, p_child_given_parent=lo,
                   activation_split=float(np.median(splits)) if splits else float("nan"))
        return out


def hub_of(graph: nx.Graph, occ_F: np.ndarray) -> int:
    """The member of highest degree (ties: the most frequent latent, then the smallest id)."""
    return int(max(graph.nodes, key=lambda v: (graph.degree[v], int(occ_F[v]), -int(v))))


def cofiring_label(st: Structure, m: dict, hub_degree: int) -> str:
    """The structure label from the graph metrics ``st`` and the co-firing metrics ``m`` (module doc)."""
    n = st.size
    if n == 2:
        hi, lo = m.get("p_parent_given_child", np.nan), m.get("p_child_given_parent", np.nan)
        return "parent_child" if hi >= PARENT_MIN and lo <= CHILD_MAX else "pair"
    if st.structure == "chain":
        return "chain"
    spokes = m.get("spoke_cofiring", np.nan)
    if np.isfinite(spokes):
        if hub_degree == n - 1 and spokes <= SPOKE_EXCLUSIVE_MAX:
            return "hub_spoke"
    elif n >= 4 and st.degree_centralisation >= HUB_MIN_CENTRALISATION:
        return "hub_spoke"
    if st.density >= CLIQUE_MIN_DENSITY or (st.density >= NEAR_CLIQUE_MIN_DENSITY and np.isfinite(spokes) and spokes >= 1.0):
        return "clique"
    return "mixed"


def annotate(table: pd.DataFrame, cof: GroupCofiring, edges_by_group: dict[str, list[tuple[int, int]]],
             structures: dict[str, Structure], hub_degree: dict[str, int]) -> pd.DataFrame:
    """groups.csv with COFIRING_COLUMNS added (group-level values on every member row) and ``structure`` set to
    :func:`cofiring_label`."""
    rows = {}
    for g in cof.groups:
        m = cof.metrics(g, edges_by_group.get(g, []))
        m["topology"] = structures[g].structure
        m["structure"] = cofiring_label(structures[g], m, hub_degree[g])
        rows[g] = m
    extra = pd.DataFrame.from_dict(rows, orient="index")
    out = table.drop(columns=["structure"]).join(extra, on="group_id")
    front = [c for c in table.columns if c != "structure"]
    return out[front[:3] + ["structure"] + front[3:] + [c for c in COFIRING_COLUMNS if c in out]]

