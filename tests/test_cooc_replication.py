"""Document support per edge and replication on held-out documents, each against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from cooc import CoocConfig, CooccurrenceCounter, GroupFinder, run_cooc, score_pairs
from cooc.documents import document_expected, poisson_chernoff_tail
from cooc.inputs import FileChunk
from cooc.replication import retest
from cooc.synthetic import document_clustered, planted
from sources.corpora import heldout_documents
from stats.multiple import bh_adjust


def _dense_support(B: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Documents in which each pair co-fires at one token at least, by a plain loop over documents."""
    S = np.zeros((B.shape[1], B.shape[1]), dtype=np.int64)
    for d in np.unique(docs):
        block = B[docs == d].astype(np.int64)
        S += (block.T @ block) > 0
    return S


def test_document_support_matches_a_dense_per_document_count_whatever_the_chunks():
    d = document_clustered(d_sae=60, n_docs=25, tokens_per_doc=40, l0=5, seed=3)
    B = (d.acts_TF > 0).toarray()
    want = _dense_support(B, d.docs_T)
    iu = np.triu_indices(60, 1)
    for chunk in (7, 40, 333, 5000):  # chunks that cut documents apart, and one chunk holding all
        counter = CooccurrenceCounter(60, n_shards=3)
        for s in range(0, B.shape[0], chunk):
            counter.update(d.acts_TF[s:s + chunk], docs_T=d.docs_T[s:s + chunk])
        sup = counter.support_
        assert sup.n_tokens_ == 25 and np.array_equal(sup.occ_F, np.diag(want))  # documents each latent fires in
        assert np.array_equal(sup.lookup(*iu), want[iu])
    scored = score_pairs(counter, min_occurrences=1, test="document")
    assert np.array_equal(scored["documents"].to_numpy(), want[scored["i"], scored["j"]])
    assert (score_pairs(CooccurrenceCounter(60).update(d.acts_TF), min_occurrences=1)["documents"] == -1).all()


def test_the_document_floor_drops_an_edge_that_lives_in_two_documents():
    """Two latents that fire together, and only together, at every token of two documents."""
    rng = np.random.default_rng(0)
    n_docs, per = 40, 50
    docs = np.repeat(np.arange(n_docs), per)
    X = (rng.random((n_docs * per, 30)) < 0.05).astype(np.float32)
    X[:, :2] = 0
    both = np.isin(docs, [3, 17])
    X[both, 0] = X[both, 1] = 1.0
    counter = CooccurrenceCounter(30).update(sp.csr_matrix(X), docs_T=docs)
    scored = score_pairs(counter, min_occurrences=5, test="binomial", min_count=5)
    pair = (scored["i"] == 0) & (scored["j"] == 1)
    assert int(scored.loc[pair, "documents"].iloc[0]) == 2
    edge = lambda k: bool(GroupFinder(min_documents=k, min_npmi=0.1).fit(scored).edge_mask_[pair.to_numpy()][0])  # noqa: E731
    assert edge(1) and edge(2) and not edge(3)


def test_a_held_out_retest_matches_an_independent_recount_and_bh():
    d = document_clustered(d_sae=50, n_docs=30, tokens_per_doc=40, l0=5, seed=6)
    held = heldout_documents(np.arange(30), 0, 0.5)[d.docs_T]
    heldout = CooccurrenceCounter(50).update(d.acts_TF[held], docs_T=d.docs_T[held])
    rng = np.random.default_rng(2)
    i = rng.integers(0, 49, 80)
    j = i + 1 + rng.integers(0, 50 - i - 1)
    got = retest(i, j, heldout, "document", 0.05)
    B = (d.acts_TF[held] > 0).toarray().astype(np.int64)
    dh = d.docs_T[held]
    count = np.array([(B[:, a] & B[:, b]).sum() for a, b in zip(i, j)])
    n_FD = np.stack([B[dh == k].sum(0) for k in np.unique(dh)], axis=1)
    N_D = np.array([(dh == k).sum() for k in np.unique(dh)])
    E = np.array([(n_FD[a] * n_FD[b] / N_D).sum() for a, b in zip(i, j)])
    assert np.array_equal(got["heldout_count"].to_numpy(), count)
    np.testing.assert_allclose(got["heldout_expected"].to_numpy(), E, rtol=1e-12)
    p = np.where(count > 0, poisson_chernoff_tail(count, E), 1.0)
    np.testing.assert_allclose(got["heldout_p_adj"].to_numpy(), bh_adjust(p), rtol=1e-12)
    assert np.array_equal(got["replicated"].to_numpy(), bh_adjust(p) < 0.05)
    np.testing.assert_allclose(document_expected(*heldout.docs_.matrix(), i, j), E, rtol=1e-12)


def _split(acts, docs, fraction=0.5):
    held_T = heldout_documents(np.unique(docs), 0, fraction)[np.searchsorted(np.unique(docs), docs)]
    return ([FileChunk(acts[~held_T], docs[~held_T])], [FileChunk(acts[held_T], docs[held_T])])


def test_planted_groups_replicate_on_held_out_documents_and_false_token_iid_edges_do_not_need_to():
    bg = document_clustered(d_sae=300, n_docs=400, tokens_per_doc=100, seed=0)
    pl = planted(d_sae=120, n_tokens=bg.acts_TF.shape[0], l0=1.0, n_hubs=2, n_cliques=2, n_chains=1, seed=0)
    acts = sp.hstack([bg.acts_TF, pl.acts_TF], format="csr")
    disc, held = _split(acts, bg.docs_T)
    res = run_cooc(disc, 420, CoocConfig(), None, progress=False, heldout_batches=held)
    rep = res.manifest["replication"]
    planted_ids = {m + 300 for g in pl.groups for m in g}
    table = res.groups_table
    planted_groups = table[table["latent"].isin(planted_ids)].drop_duplicates("group_id")
    print("replication of planted groups in clustered text:", rep,
          planted_groups[["group_size", "structure", "replication_rate"]].to_dict("records"))
    assert res.manifest["test"] == "document" and rep["heldout_documents"]["n_documents"] > 150
    assert len(planted_groups) == 5 and (planted_groups["replication_rate"] >= 0.8).all()
    assert rep["edges_tested"] == res.manifest["n_edges"] and rep["edges_replicated"] <= rep["edges_tested"]
    assert {"replication_rate", "replication_edges", "replication_tested"} <= set(table.columns)
    # the token-iid null, for comparison: its topical false edges are beside it in the manifest
    assert res.manifest["token_iid"]["n_edges"] > res.manifest["n_edges"]
    # under the token-iid null a false edge of clustered text also "replicates": replication is no cure for the
    # wrong null, which is why the held-out test uses the same (document) null
    res_iid = run_cooc(disc, 420, CoocConfig(test="binomial"), None, progress=False, heldout_batches=held)
    pl_latents = table["latent"].isin(planted_ids)
    assert res_iid.manifest["n_edges"] > 3 * int(pl_latents.sum())
    assert res_iid.manifest["replication"]["edge_replication_rate"] > 0.5


def test_without_document_ids_the_null_is_token_iid_and_the_manifest_says_so():
    d = document_clustered(d_sae=80, n_docs=20, tokens_per_doc=50, seed=1)
    res = run_cooc([d.acts_TF], 80, CoocConfig(), None, progress=False)
    assert res.manifest["test"] == "binomial" and res.manifest["null"].startswith("tokens iid")
    assert res.manifest["documents"]["n_documents"] is None and res.manifest["replication"] is None
    assert not res.manifest["min_documents_applied"] and res.manifest["token_iid"] is None


@pytest.mark.parametrize("fraction", [0.3, 0.5])
def test_the_file_split_is_the_corpus_split(fraction):
    from cooc.inputs import split_rows

    d = document_clustered(d_sae=20, n_docs=30, tokens_per_doc=10, seed=2)
    rows = np.random.default_rng(0).permutation(d.acts_TF.shape[0])  # rows in any order
    (a, da), (h, dh) = split_rows(d.acts_TF[rows], d.docs_T[rows], 0, fraction)
    held = set(np.flatnonzero(heldout_documents(np.arange(30), 0, fraction)).tolist())
    assert set(dh.tolist()) == held and not set(da.tolist()) & held
    assert np.all(np.diff(da) >= 0) and np.all(np.diff(dh) >= 0)  # sorted by document: contiguous
    assert a.shape[0] + h.shape[0] == d.acts_TF.shape[0]
