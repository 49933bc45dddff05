"""Group mining, stable ids and structure labels (cooc.groups, cooc.structure)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd
import pytest

from cooc import CoocConfig, GroupFinder, describe, group_id, run_cooc
from cooc.recovery import adjusted_rand, recovery
from cooc.groups import _local_cut, largest_component
from cooc.inputs import iter_chunks
from cooc.structure import degree_centralisation
from cooc.synthetic import planted


# ----------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("n", [3, 4, 6, 10])
def test_complete_graphs_are_cliques_with_density_one(n):
    s = describe(nx.complete_graph(n))
    assert s.structure == "clique" and s.density == 1 and s.degree_centralisation == 0 and s.diameter == 1


@pytest.mark.parametrize("spokes", [3, 4, 7, 15])
def test_stars_are_hub_spoke_with_centralisation_one(spokes):
    s = describe(nx.star_graph(spokes))  # spokes + 1 nodes
    assert s.structure == "hub_spoke" and s.degree_centralisation == pytest.approx(1.0) and s.clustering == 0


@pytest.mark.parametrize("n", [3, 4, 5, 9, 20])
def test_paths_are_chains_with_density_two_over_n(n):
    s = describe(nx.path_graph(n))
    assert s.structure == "chain" and s.density == pytest.approx(2 / n) and s.diameter == n - 1


def test_a_pair_is_its_own_label_and_three_node_star_counts_as_chain():
    assert describe(nx.path_graph(2)).structure == "pair"
    assert np.isnan(describe(nx.path_graph(2)).degree_centralisation)
    assert describe(nx.star_graph(2)).structure == "chain"


def test_a_hub_with_a_few_spoke_spoke_edges_is_still_hub_spoke_and_other_shapes_are_mixed():
    g = nx.star_graph(8)
    g.add_edges_from([(1, 2), (3, 4)])
    assert degree_centralisation(g) == pytest.approx(1 - 2 / 28)  # 1 - spoke density
    assert describe(g).structure == "hub_spoke"
    assert describe(nx.cycle_graph(6)).structure == "mixed"
    assert describe(nx.lollipop_graph(5, 4)).structure == "mixed"
    assert describe(nx.balanced_tree(2, 3)).structure == "mixed"


# -------------------------------------------------------------------------------------- groups
def scored_table(edges: list[tuple[int, int, float]]) -> pd.DataFrame:
    """A scored-pairs table whose listed pairs are all significant with the given Jaccard."""
    i, j, jac = (np.array(x) for x in zip(*edges))
    return pd.DataFrame({"i": i, "j": j, "count": 50, "expected": 1.0, "jaccard": jac, "npmi": 0.5,
                         "p_value": 1e-12, "p_adj": 1e-10})


def test_group_ids_depend_only_on_the_member_latents():
    assert group_id([5, 3, 9]) == group_id((9, 5, 3)) == group_id(np.array([3, 5, 9]))
    assert group_id([3, 5, 9]) != group_id([3, 5, 10])
    assert group_id([1, 2]).startswith("g") and len(group_id([1, 2])) == 11


def test_oversized_components_are_split_never_merged():
    clique_a = [(a, b, 0.6) for a in range(6) for b in range(a + 1, 6)]
    clique_b = [(a, b, 0.6) for a in range(10, 16) for b in range(a + 1, 16)]
    bridge = [(5, 10, 0.2)]
    table = scored_table(clique_a + clique_b + bridge)
    whole = GroupFinder(max_group_size=20).fit(table).groups_
    assert [g.members for g in whole] == [tuple(range(6)) + tuple(range(10, 16))]
    split = GroupFinder(max_group_size=8, seed=0).fit(table).groups_
    assert sorted(g.members for g in split) == [tuple(range(6)), tuple(range(10, 16))]
    assert all(g.structure.structure == "clique" for g in split)
    again = GroupFinder(max_group_size=8, seed=0).fit(table.sample(frac=1, random_state=1)).groups_
    assert [g.group_id for g in again] == [g.group_id for g in split]


def test_a_component_louvain_cannot_split_is_cut_at_a_stricter_local_jaccard():
    path = [(k, k + 1, 0.1 + 0.01 * k) for k in range(11)]  # a chain of 12 with one weakest link
    groups = GroupFinder(max_group_size=6, seed=0).fit(scored_table(path)).groups_
    assert all(g.size <= 6 for g in groups)
    assert sorted(m for g in groups for m in g.members) == list(range(12))


def test_the_local_cut_removes_the_weakest_links_first():
    graph = nx.Graph()
    graph.add_weighted_edges_from([(0, 1, 0.5), (1, 2, 0.1), (2, 3, 0.5), (3, 4, 0.6)], weight="jaccard")
    assert sorted(map(sorted, _local_cut(graph))) == [[0, 1], [2, 3, 4]]


def test_a_component_with_all_edges_equal_is_kept_whole_rather_than_shattered(caplog):
    clique = [(a, b, 0.3) for a in range(10) for b in range(a + 1, 10)]
    groups = GroupFinder(max_group_size=6).fit(scored_table(clique)).groups_
    assert [g.members for g in groups] == [tuple(range(10))]
    assert "cannot be split" in caplog.text


def test_edges_need_significance_and_every_effect_floor():
    table = scored_table([(0, 1, 0.5), (2, 3, 0.5), (4, 5, 0.5), (6, 7, 0.005)])
    table.loc[1, "p_adj"] = 0.2
    table.loc[2, "count"] = 2
    finder = GroupFinder(alpha=0.05, min_count=5, min_jaccard=0.01).fit(table)
    assert finder.edge_mask_.tolist() == [True, False, False, False]
    assert [g.members for g in finder.groups_] == [(0, 1)]


def test_size_target_bisects_one_global_jaccard_cut_into_the_size_window():
    rng = np.random.default_rng(0)
    n = 400
    i, j = np.triu_indices(n, 1)
    keep = rng.random(i.shape[0]) < 0.02
    table = scored_table(list(zip(i[keep], j[keep], rng.random(keep.sum()))))
    finder = GroupFinder(method="size_target", min_size=40, max_size=60).fit(table)
    assert finder.converged_ and 40 <= finder.largest_component_ <= 60
    jac = table.jaccard.to_numpy()
    np.testing.assert_array_equal(finder.edge_mask_, jac > finder.cut_)
    assert largest_component(table.i.to_numpy()[jac > finder.cut_], table.j.to_numpy()[jac > finder.cut_]) \
        == max(g.size for g in finder.groups_)


def test_adjusted_rand_matches_sklearn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 200), rng.integers(0, 7, 200)
    b[:100] = a[:100]
    assert adjusted_rand(a, b) == pytest.approx(sklearn_metrics.adjusted_rand_score(a, b))


def test_default_settings_recover_planted_groups_and_label_their_structure():
    data = planted(d_sae=1500, n_tokens=25_000, seed=11)
    res = {m: run_cooc(iter_chunks(data.acts_TF, 4096), 1500, CoocConfig(method=m), None, progress=False)
           for m in ("significant", "size_target")}
    good = recovery(data.groups, data.kinds, res["significant"].groups, 1500)
    ref = recovery(data.groups, data.kinds, res["size_target"].groups, 1500)
    print(f"planted recovery: significant {good}; size_target {ref}")
    assert good.ari >= 0.85 and good.mean_best_jaccard >= 0.85
    assert good.labels_right >= 8
    assert ref.ari < good.ari
    # the same group gets the same id whatever method found it
    ids_sig = {g.members: g.group_id for g in res["significant"].groups}
    assert all(ids_sig[g.members] == g.group_id for g in res["size_target"].groups if g.members in ids_sig)
