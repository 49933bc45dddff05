"""Structure from co-firing: the sums against a plain recount, the label rules, and planted structures (hub with
exclusive spokes, near-clique, chain, parent/child with activation splitting) recovered with their labels in
document-clustered text."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cooc import CoocConfig, run_cooc
from cooc.cofiring import GroupCofiring, cofiring_label
from cooc.inputs import FileChunk
from cooc.recovery import recovery
from cooc.structure import Structure
from cooc.synthetic import document_clustered, planted


def test_the_cofiring_metrics_match_a_plain_recount():
    rng = np.random.default_rng(0)
    X = rng.exponential(1.0, (500, 12)) * (rng.random((500, 12)) < 0.3)
    members, hub = (2, 5, 7, 9), 5
    cof = GroupCofiring({"g": (members, hub)}, threshold=0.5)
    for s in range(0, 500, 64):
        cof.update(sp.csr_matrix(X[s:s + 64]))
    edges = [(2, 5), (5, 7), (5, 9), (7, 9)]
    m = cof.metrics("g", edges)
    B = X[:, members] > 0.5
    A = np.where(B, X[:, members], 0.0)
    anyf = B.any(1)
    assert m["coactive_mean"] == pytest.approx(B[anyf].sum(1).mean())
    on = B[:, 1]  # the hub's column
    spokes = [0, 2, 3]
    obs = sum((B[on, a] & B[on, b]).sum() for a in spokes for b in spokes if a < b)
    exp = sum(B[on, a].sum() * B[on, b].sum() / on.sum() for a in spokes for b in spokes if a < b)
    assert m["spoke_cofiring"] == pytest.approx(obs / exp)
    col = {2: 0, 5: 1, 7: 2, 9: 3}
    gaps, splits = [], []
    for i, j in edges:
        a, b = B[:, col[i]], B[:, col[j]]
        p_ba, p_ab = (a & b).sum() / a.sum(), (a & b).sum() / b.sum()
        gaps.append((abs(p_ba - p_ab), max(p_ba, p_ab), min(p_ba, p_ab)))
        splits += [A[x & y, col[k]].mean() / A[x & ~y, col[k]].mean() for k, x, y in ((i, a, b), (j, b, a))]
    gap, hi, lo = max(gaps)
    assert (m["asymmetry"], m["p_parent_given_child"], m["p_child_given_parent"]) == pytest.approx((gap, hi, lo))
    assert m["activation_split"] == pytest.approx(np.median(splits))


def _st(n, m, density, cent, label):
    return Structure(n, m, density, cent, 0.0, 2, label)


def test_the_label_rules():
    assert cofiring_label(_st(2, 1, 1, np.nan, "pair"), {"p_parent_given_child": 0.95, "p_child_given_parent": 0.2}, 1) == "parent_child"
    assert cofiring_label(_st(2, 1, 1, np.nan, "pair"), {"p_parent_given_child": 0.6, "p_child_given_parent": 0.5}, 1) == "pair"
    # a hub with exclusive spokes is hub_spoke even when noise adds spoke edges (topology alone says mixed) ...
    assert cofiring_label(_st(6, 8, 0.53, 0.5, "mixed"), {"spoke_cofiring": 0.1}, 5) == "hub_spoke"
    # ... and a star whose spokes fire together given the hub is not
    assert cofiring_label(_st(6, 5, 0.33, 1.0, "hub_spoke"), {"spoke_cofiring": 1.4}, 5) == "mixed"
    assert cofiring_label(_st(6, 10, 0.67, 0.3, "mixed"), {"spoke_cofiring": 1.2}, 5) == "clique"  # near-clique
    assert cofiring_label(_st(5, 4, 0.4, 0.17, "chain"), {"spoke_cofiring": 0.0}, 2) == "chain"
    assert cofiring_label(_st(6, 5, 0.33, 1.0, "hub_spoke"), {"spoke_cofiring": np.nan}, 5) == "hub_spoke"  # topology


def _split_by_document(acts, docs):
    from sources.corpora import heldout_documents

    held = heldout_documents(np.unique(docs), 0, 0.5)[np.searchsorted(np.unique(docs), docs)]
    return acts[~held], docs[~held], acts[held], docs[held]


def test_planted_structures_in_clustered_text_are_recovered_with_their_labels():
    bg = document_clustered(d_sae=300, n_docs=400, tokens_per_doc=100, seed=0)
    pl = planted(d_sae=140, n_tokens=bg.acts_TF.shape[0], l0=1.0, n_hubs=2, n_cliques=2, n_chains=1, n_parents=2, seed=0)
    acts = sp.hstack([bg.acts_TF, pl.acts_TF], format="csr")
    a, d, ha, hd = _split_by_document(acts, bg.docs_T)
    truth = [[m + 300 for m in g] for g in pl.groups]
    res = run_cooc([FileChunk(a, d)], 440, CoocConfig(), None, progress=False, heldout_batches=[FileChunk(ha, hd)],
                   rescan=lambda: [FileChunk(a, d)])
    got = recovery(truth, pl.kinds, res.groups, 440)
    table = res.groups_table
    print("planted structures in clustered text:", got,
          table.drop_duplicates("group_id")[["group_size", "structure", "topology", "spoke_cofiring", "asymmetry",
                                             "activation_split", "replication_rate"]].to_dict("records"))
    assert got.exact == len(truth) and got.labels_right == len(truth)
    by_kind = {k: table[table["latent"].isin(t)].iloc[0] for t, k in zip(truth, pl.kinds)}
    assert by_kind["hub_spoke"]["spoke_cofiring"] < 0.3  # the planted spokes co-fire given the hub only by background
    assert by_kind["parent_child"]["p_parent_given_child"] > 0.95 and by_kind["parent_child"]["activation_split"] == pytest.approx(0.5, abs=0.1)
    assert res.manifest["structure_from"].startswith("edge graph and co-firing")
    # without the second pass the labels are the edge graph's: parent/child pairs are plain pairs
    topo = run_cooc([FileChunk(a, d)], 440, CoocConfig(replication=False), None, progress=False)
    assert recovery(truth, pl.kinds, topo.groups, 440).labels_right == len(truth) - 2
