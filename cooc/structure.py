"""Shape of a group's co-occurrence graph: metrics and a label.

For a connected group graph with n nodes, m edges and degrees d_v:

* density        = 2m / (n (n - 1))                  (1 for a clique, 2/n for a path or a star)
* centralisation = Σ_v (d_max - d_v) / ((n - 1)(n - 2))  Freeman degree centralisation, n >= 3:
                   1 for a star, 0 for a clique or a cycle, 2/((n-1)(n-2)) for a path;
                   NaN for n = 2. With a hub adjacent to all others it equals 1 minus the
                   density among the spokes, so a high value means "one hub, sparse rest".
* clustering     = mean local clustering coefficient (1 clique, 0 star/path/tree)
* diameter       = longest shortest path (1 clique, 2 star, n - 1 path)

Labels, checked in this order:

* ``pair``      n = 2 (too small to have a shape)
* ``clique``    density >= CLIQUE_MIN_DENSITY (0.9)
* ``chain``     a tree (m = n - 1) with max degree <= 2, i.e. a path: diameter = n - 1.
                The 3-node path is also a 2-spoke star; it is labelled chain.
* ``hub_spoke`` n >= 4 and centralisation >= HUB_MIN_CENTRALISATION (0.7)
* ``mixed``     anything else
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import networkx as nx

CLIQUE_MIN_DENSITY = 0.9
HUB_MIN_CENTRALISATION = 0.7
LABELS = ("pair", "clique", "chain", "hub_spoke", "mixed")


@dataclass(frozen=True)
class Structure:
    """Metrics and label of one group graph."""

    size: int
    n_edges: int
    density: float
    degree_centralisation: float
    clustering: float
    diameter: int
    structure: str

    def as_dict(self) -> dict:
        return asdict(self)


def degree_centralisation(graph: nx.Graph) -> float:
    """Freeman degree centralisation (star = 1, regular graph = 0); NaN below 3 nodes."""
    n = graph.number_of_nodes()
    if n < 3:
        return float("nan")
    degrees = [d for _, d in graph.degree()]
    d_max = max(degrees)
    return sum(d_max - d for d in degrees) / ((n - 1) * (n - 2))


def label(n: int, n_edges: int, density: float, centralisation: float, max_degree: int, diameter: int) -> str:
    """Structure label from precomputed metrics of a connected graph (rules in the module doc)."""
    if n == 2:
        return "pair"
    if density >= CLIQUE_MIN_DENSITY:
        return "clique"
    if n_edges == n - 1 and max_degree <= 2 and diameter == n - 1:
        return "chain"
    if n >= 4 and centralisation >= HUB_MIN_CENTRALISATION:
        return "hub_spoke"
    return "mixed"


def describe(graph: nx.Graph) -> Structure:
    """Metrics and label of a connected graph with at least two nodes."""
    n = graph.number_of_nodes()
    if n < 2 or not nx.is_connected(graph):
        raise ValueError("describe() needs a connected graph with at least 2 nodes")
    m = graph.number_of_edges()
    density = 2.0 * m / (n * (n - 1))
    cent = degree_centralisation(graph)
    clustering = nx.average_clustering(graph)
    diameter = nx.diameter(graph)
    max_degree = max(d for _, d in graph.degree())
    return Structure(n, m, density, cent, clustering, diameter, label(n, m, density, cent, max_degree, diameter))
