"""The document-stratified null (cooc.documents, cooc.test: document): calibration on clustered text, power on
planted groups embedded in it, and its numeric core against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats

from cooc import CoocConfig, CooccurrenceCounter, GroupFinder, run_cooc, score_pairs
from cooc.documents import DocumentCounts, document_expected, poisson_chernoff_tail
from cooc.recovery import recovery
from cooc.synthetic import document_clustered, planted
from sources.corpora import heldout_documents
from sources.errors import ConfigError

ALPHA = 0.05


def test_on_clustered_text_the_document_null_keeps_the_false_discovery_rate_and_the_token_iid_null_does_not():
    """Latents independent given the document (topic-dependent rates): every discovery is false, so the FDR is the
    rate of repeats with any discovery. It must stay <= alpha for the document null; the token-iid null on the same
    data must exceed it (else the data would be too easy to show anything)."""
    repeats = 12
    any_doc, any_iid, n_iid = 0, 0, []
    for seed in range(repeats):
        d = document_clustered(d_sae=300, n_docs=200, tokens_per_doc=100, seed=seed)
        counter = CooccurrenceCounter(300).update(d.acts_TF, docs_T=d.docs_T)
        doc = score_pairs(counter, min_occurrences=10, test="document")
        iid = score_pairs(counter, min_occurrences=10, test="binomial")
        any_doc += bool((doc["p_adj"] < ALPHA).any())
        any_iid += bool((iid["p_adj"] < ALPHA).any())
        n_iid.append(int((iid["p_adj"] < ALPHA).sum()))
    print(f"false-discovery rate over {repeats} clustered nulls: document {any_doc / repeats:.2f}, token-iid "
          f"{any_iid / repeats:.2f} (median {int(np.median(n_iid))} false edges)")
    assert any_doc / repeats <= ALPHA + 1 / repeats  # at most one repeat of twelve by chance
    assert any_iid / repeats > ALPHA and np.median(n_iid) > 100


def test_planted_groups_in_clustered_text_are_recovered_under_the_document_null():
    bg = document_clustered(d_sae=300, n_docs=200, tokens_per_doc=100, seed=0)
    pl = planted(d_sae=120, n_tokens=bg.acts_TF.shape[0], l0=1.0, n_hubs=2, n_cliques=2, n_chains=1, seed=0)
    acts = sp.hstack([bg.acts_TF, pl.acts_TF], format="csr")
    truth = [[m + 300 for m in g] for g in pl.groups]
    counter = CooccurrenceCounter(420).update(acts, docs_T=bg.docs_T)
    found = {}
    for test in ("document", "binomial"):
        cfg = CoocConfig(test=test)
        finder = GroupFinder.from_config(cfg, 0).fit(score_pairs(counter, cfg.min_occurrences, test=test,
                                                                 min_count=cfg.min_count))
        found[test] = recovery(truth, pl.kinds, finder.groups_, 420)
    print("recovery of planted groups in clustered text:", found)
    good = found["document"]
    assert good.exact == len(truth) and good.labels_right == len(truth) and good.ari > 0.99
    assert found["binomial"].ari < 0.5  # the token-iid null merges them into topical components


def test_document_expectation_and_counts_match_a_dense_per_document_computation():
    rng = np.random.default_rng(1)
    d = document_clustered(d_sae=40, n_docs=15, tokens_per_doc=30, l0=4, seed=2)
    counter = CooccurrenceCounter(40)
    for s in range(0, d.acts_TF.shape[0], 70):  # chunks that cut documents apart
        counter.update(d.acts_TF[s:s + 70], docs_T=d.docs_T[s:s + 70] * 7 + 3)  # any int64 ids
    n_FD, tokens_D = counter.docs_.matrix()
    B = (d.acts_TF > 0).toarray().astype(np.int64)
    dense = np.stack([B[d.docs_T == k].sum(0) for k in range(15)], axis=1)
    assert np.array_equal(n_FD.toarray(), dense) and np.array_equal(tokens_D, np.full(15, 30))
    i, j = rng.integers(0, 40, 200), rng.integers(0, 40, 200)
    want = np.array([sum(dense[a, k] * dense[b, k] / 30 for k in range(15)) for a, b in zip(i, j)])
    np.testing.assert_allclose(document_expected(n_FD, tokens_D, i, j, chunk=64), want, rtol=1e-12)
    # and the scored pairs carry it as their expectation
    df = score_pairs(counter, min_occurrences=1, test="document")
    np.testing.assert_allclose(df["expected"], document_expected(n_FD, tokens_D, df["i"].to_numpy(), df["j"].to_numpy()))


def test_the_poisson_chernoff_p_value_is_never_below_the_exact_tail_of_the_stratified_null():
    """Exact law of the count: the convolution of one hypergeometric per document."""
    rng = np.random.default_rng(0)
    for _ in range(30):
        k = int(rng.integers(1, 6))
        N = rng.integers(5, 40, k)
        ni, nj = rng.integers(0, N + 1), rng.integers(0, N + 1)
        pmf = np.array([1.0])
        for Nd, a, b in zip(N, ni, nj):
            pmf = np.convolve(pmf, stats.hypergeom.pmf(np.arange(min(a, b) + 1), Nd, a, b))
        E = float(np.sum(ni * nj / N))
        c = np.arange(len(pmf))
        exact = pmf[::-1].cumsum()[::-1]  # P(X >= c)
        bound = poisson_chernoff_tail(c, np.full(len(c), E))
        assert np.all(bound >= exact - 1e-12), (N, ni, nj)
    assert poisson_chernoff_tail(np.array([1]), np.array([0.01]))[0] == pytest.approx(0.027, abs=0.001)
    assert poisson_chernoff_tail(np.array([2, 3]), np.array([2.0, 5.0])).tolist() == [1.0, 1.0]


def test_document_counts_merge_like_one_pass_and_bad_document_input_is_one_clear_error():
    d = document_clustered(d_sae=50, n_docs=20, tokens_per_doc=25, seed=4)
    one = CooccurrenceCounter(50).update(d.acts_TF, docs_T=d.docs_T)
    cut = int(np.flatnonzero(np.diff(d.docs_T))[9]) + 1  # between the 10th and 11th document
    a = CooccurrenceCounter(50).update(d.acts_TF[:cut], docs_T=d.docs_T[:cut])
    b = CooccurrenceCounter(50).update(d.acts_TF[cut:], docs_T=d.docs_T[cut:])
    a.merge(b)
    for x, y in zip(one.docs_.matrix(), a.docs_.matrix()):
        assert (x != y).nnz == 0 if sp.issparse(x) else np.array_equal(x, y)
    whole, merged = one.support_.upper_pairs(), a.support_.upper_pairs()
    assert all(np.array_equal(getattr(whole, k), getattr(merged, k)) for k in ("i", "j", "count"))
    with pytest.raises(ConfigError, match="counted by both counters"):  # a document split between two counters
        CooccurrenceCounter(50).update(d.acts_TF[:cut + 3], docs_T=d.docs_T[:cut + 3]).merge(
            CooccurrenceCounter(50).update(d.acts_TF[cut + 3:], docs_T=d.docs_T[cut + 3:]))
    with pytest.raises(ConfigError, match="separate pieces"):  # a document's rows not contiguous
        rows = np.r_[0:cut, cut + 30:len(d.docs_T), cut:cut + 30]
        CooccurrenceCounter(50).update(d.acts_TF[rows], docs_T=d.docs_T[rows]).support_
    with pytest.raises(ConfigError, match="some chunks but not others"):
        CooccurrenceCounter(50).update(d.acts_TF[:10], docs_T=d.docs_T[:10]).update(d.acts_TF[10:20])
    with pytest.raises(ConfigError, match="one id per counted token"):
        DocumentCounts(50).update((d.acts_TF[:10] > 0).astype(np.int64), d.docs_T[:9])
    with pytest.raises(ConfigError, match="document id of every counted token"):
        score_pairs(CooccurrenceCounter(50).update(d.acts_TF), test="document")
    with pytest.raises(ConfigError, match="document id of every counted token") as exc:
        run_cooc([d.acts_TF], 50, CoocConfig(test="document"), None, progress=False)
    assert exc.value.field == "cooc.test"


def test_a_file_input_with_document_ids_gets_the_document_null_and_bad_ids_are_one_line(tmp_path, capsys):
    from cooc.result import CoocResult
    from experiments.cooc import main

    d = document_clustered(d_sae=120, n_docs=60, tokens_per_doc=50, seed=5)
    sp.save_npz(tmp_path / "acts.npz", d.acts_TF)
    np.save(tmp_path / "docs.npy", d.docs_T)
    np.save(tmp_path / "short.npy", d.docs_T[:-1])
    np.save(tmp_path / "float.npy", d.docs_T.astype(np.float64))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"activations:\n  source: file\n  path: {tmp_path / 'acts.npz'}\n  documents: {tmp_path / 'docs.npy'}\n"
                   f"cooc:\n  test: document\n  chunk_tokens: 700\n")
    assert main([str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    res = CoocResult.load(tmp_path / "run" / "cooc", pairs=True)
    held = heldout_documents(np.arange(60), 0, 0.5)  # the file's documents split as a corpus's are (data.seed 0)
    n_disc = int((~held).sum())
    assert 15 < n_disc < 45 and res.manifest["null"].startswith("document")
    assert res.manifest["documents"]["n_documents"] == n_disc
    assert res.manifest["replication"]["heldout_documents"]["n_documents"] == 60 - n_disc
    disc = ~held[d.docs_T]
    counter = CooccurrenceCounter(120).update(d.acts_TF[disc], docs_T=d.docs_T[disc])
    want = score_pairs(counter, min_occurrences=10, test="document", min_count=5)
    np.testing.assert_allclose(res.pairs["expected"].to_numpy(), want["expected"].to_numpy(), rtol=1e-12)
    for name, needle in (("short.npy", "has 2999 document ids but the activation file has 3000 rows"),
                         ("float.npy", "not integers"), ("missing.npy", "does not exist")):
        assert main([str(cfg), "--out", str(tmp_path / f"out_{name}"), "--quiet", "--set",
                     f"activations.documents={tmp_path / name}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: activations.documents:") and needle in err[0]
        assert not (tmp_path / f"out_{name}").exists()  # nothing written
    # the token-iid test records the spread too, without the per-document store
    assert main([str(cfg), "--out", str(tmp_path / "iid"), "--quiet", "--set", "cooc.test=binomial"]) == 0
    iid = CoocResult.load(tmp_path / "iid" / "cooc")
    assert iid.manifest["documents"] == res.manifest["documents"] and iid.manifest["null"].startswith("tokens iid")
    spread = res.manifest["documents"]
    assert spread["largest_share"] == pytest.approx(1 / n_disc, abs=1e-6) and spread["effective_documents"] == pytest.approx(n_disc, abs=1e-3)  # rounded in the manifest
    lean = CooccurrenceCounter(120, per_document=False).update(d.acts_TF[disc], docs_T=d.docs_T[disc])
    assert lean.docs_ is None and lean.spread_.summary() == counter.spread_.summary()
    # without document ids the document null is refused before anything is counted
    assert main([str(cfg), "--out", str(tmp_path / "nodocs"), "--quiet", "--set", "activations.documents=null"]) == 2
    assert "cooc.test: document needs the document id" in capsys.readouterr().err
