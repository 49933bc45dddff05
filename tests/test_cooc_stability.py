"""Group stability: per-document pair counts against a recount, the bootstrap machinery against the stage itself
(unit weights give back the stage's own tests), and stable planted groups in clustered text."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from cooc import CoocConfig, CooccurrenceCounter, GroupFinder, run_cooc, score_pairs
from cooc.inputs import FileChunk
from cooc.stability import PairDocuments, _replicate_table
from cooc.synthetic import document_clustered, planted


def test_per_document_pair_counts_match_a_dense_recount():
    d = document_clustered(d_sae=40, n_docs=12, tokens_per_doc=30, l0=5, seed=1)
    B = (d.acts_TF > 0).astype(np.int32).tocsr()
    rng = np.random.default_rng(0)
    i = rng.integers(0, 39, 60)
    j = i + 1 + rng.integers(0, 40 - i - 1)
    a, b = PairDocuments(i, j), PairDocuments(i, j)
    a.update(B[:170], d.docs_T[:170])  # a document cut between two accumulators
    b.update(B[170:], d.docs_T[170:])
    ids = [5, 0, 11, 3, 99] + [k for k in range(12) if k not in (5, 0, 11, 3)]
    got = a.merge(b).matrix(ids).toarray()
    dense = B.toarray()
    want = np.array([[(dense[d.docs_T == k][:, x] & dense[d.docs_T == k][:, y]).sum() if k < 12 else 0
                      for x, y in zip(i, j)] for k in ids])
    assert np.array_equal(got, want)


def test_a_replicate_with_unit_weights_is_the_stage_itself():
    """Every scored pair a candidate, every document drawn once: the replicate's statistics and groups are the
    stage's (the bootstrap reweights the stage's own computation, nothing else)."""
    bg = document_clustered(d_sae=200, n_docs=120, tokens_per_doc=60, seed=3)
    pl = planted(d_sae=60, n_tokens=bg.acts_TF.shape[0], l0=1.0, n_hubs=1, n_cliques=1, n_chains=0, seed=1)
    acts = sp.hstack([bg.acts_TF, pl.acts_TF], format="csr")
    counter = CooccurrenceCounter(260).update(acts, docs_T=bg.docs_T)
    cfg = CoocConfig(min_npmi=0.3)
    scored = score_pairs(counter, cfg.min_occurrences, test="document", min_count=cfg.min_count)
    scored["documents"] = counter.support_.lookup(scored["i"], scored["j"])
    pd_ = PairDocuments(scored["i"], scored["j"]).update((acts > 0).astype(np.int32).tocsr(), bg.docs_T)
    n_FD, tokens_D = counter.docs_.matrix()
    ids = sorted(counter.docs_._ids, key=counter.docs_._ids.get)
    rep = _replicate_table(np.ones(len(ids)), scored, pd_.matrix(ids), n_FD, tokens_D, "document", cfg.min_occurrences)
    for col in ("count", "documents", "jaccard", "npmi", "p_adj"):
        np.testing.assert_allclose(rep[col].to_numpy(dtype=float), scored[col].to_numpy(dtype=float), rtol=1e-9, err_msg=col)
    a = GroupFinder.from_config(cfg, 0).fit(scored).groups_
    b = GroupFinder.from_config(cfg, 0).fit(rep).groups_
    assert [g.members for g in a] == [g.members for g in b] and len(a) >= 2


def test_planted_groups_are_stable_and_the_columns_are_written():
    bg = document_clustered(d_sae=300, n_docs=300, tokens_per_doc=100, seed=0)
    pl = planted(d_sae=120, n_tokens=bg.acts_TF.shape[0], l0=1.0, n_hubs=2, n_cliques=2, n_chains=1, seed=0)
    acts = sp.hstack([bg.acts_TF, pl.acts_TF], format="csr")
    chunk = [FileChunk(acts, bg.docs_T)]
    res = run_cooc(chunk, 420, CoocConfig(stability_replicates=20), None, progress=False, rescan=lambda: chunk)
    t = res.groups_table.drop_duplicates("group_id")
    print("stability of planted groups:", t[["group_size", "structure", "stability", "label_stability",
                                             "stability_louvain"]].to_dict("records"))
    planted_ids = {m + 300 for g in pl.groups for m in g}
    mine = res.groups_table[res.groups_table["latent"].isin(planted_ids)].drop_duplicates("group_id")
    assert len(mine) == 5 and (mine["stability"] >= 0.9).all() and (mine["label_stability"] >= 0.8).all()
    assert (mine["stability_louvain"] == 1.0).all()  # whole components: Louvain never touches them
    off = run_cooc(chunk, 420, CoocConfig(stability_replicates=0), None, progress=False, rescan=lambda: chunk)
    assert "stability" not in off.groups_table and "topology" in off.groups_table


def test_a_group_carried_by_three_documents_is_less_stable_than_planted_groups():
    """The stability column can fail: two latents that co-fire strongly but only inside three documents pass every
    floor (document support 3) yet appear in a bootstrap replicate only when enough of those documents are drawn."""
    bg = document_clustered(d_sae=300, n_docs=300, tokens_per_doc=100, seed=0)
    pl = planted(d_sae=120, n_tokens=bg.acts_TF.shape[0], l0=1.0, n_hubs=1, n_cliques=2, n_chains=0, seed=0)
    n = bg.acts_TF.shape[0]
    fragile = np.zeros((n, 2), dtype=np.float32)
    rng = np.random.default_rng(0)
    for doc in (10, 150, 290):  # 25 shared tokens in each of three documents, nowhere else
        rows = doc * 100 + rng.choice(100, 25, replace=False)
        fragile[rows] = 1.0
    acts = sp.hstack([bg.acts_TF, pl.acts_TF, sp.csr_matrix(fragile)], format="csr")
    chunk = [FileChunk(acts, bg.docs_T)]
    res = run_cooc(chunk, 422, CoocConfig(stability_replicates=20), None, progress=False, rescan=lambda: chunk)
    t = res.groups_table
    frag = t[t["latent"].isin([420, 421])].drop_duplicates("group_id")
    assert len(frag) == 1 and set(t.loc[t["group_id"] == frag["group_id"].item(), "latent"]) == {420, 421}
    planted_ids = {m + 300 for g in pl.groups for m in g}
    robust = t[t["latent"].isin(planted_ids)].drop_duplicates("group_id")
    print("fragile stability", frag["stability"].item(), "planted", robust["stability"].tolist())
    assert frag["stability"].item() <= 0.7 < robust["stability"].min()
