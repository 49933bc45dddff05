"""``run_cooc``: count, score and group into a :class:`cooc.result.CoocResult` — the call shared by
experiments.cooc and the notebook API (the experiments layer saves the result into the run folder)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import scipy.sparse as sp

from cooc.config import CoocConfig
from cooc.counting import CooccurrenceCounter, check_csr
from cooc.groups import GroupFinder, groups_frame, internal_edges
from cooc.result import CoocResult
from cooc.scoring import score_pairs
from sources.errors import ConfigError
from sources.files import git_commit, package_versions
from sources.progress import progress_bar


NULLS = {"binomial": "tokens iid (binomial tail)", "hypergeometric": "tokens iid (hypergeometric tail)",
         "document": "document-stratified: tokens exchangeable within each document (Poisson-Chernoff tail)"}
"""What each cooc.test assumes, for the manifest and the report."""


def _as_csr(batch: Any) -> sp.csr_matrix:
    """Accept a CSR matrix or an object with ``.latents`` (sources.stream.LatentBatch)."""
    return batch.latents if hasattr(batch, "latents") else batch


def count(latent_batches: Iterable[Any], d_sae: int | None, cfg: CoocConfig, theta_F=None,
          progress: bool = True, allow_empty: bool = False) -> CooccurrenceCounter:
    """Stream batches through a :class:`CooccurrenceCounter` (stops at cfg.max_tokens).

    ``allow_empty`` (one rank of a distributed run, whose shard may be empty): return an empty counter
    of width ``d_sae`` instead of refusing an input with no tokens.
    """
    counter = None
    width = cfg.d_sae if d_sae is None else d_sae

    def new_counter(width: int) -> CooccurrenceCounter:
        theta = theta_F if cfg.use_sae_threshold else None
        return CooccurrenceCounter(width, cfg.threshold, theta, cfg.prune_below, cfg.prune_every)

    if cfg.d_sae is not None and d_sae is not None and cfg.d_sae != d_sae:
        raise ConfigError("cooc.d_sae", f"is {cfg.d_sae} but the SAE has d_sae={d_sae}")
    bar = progress_bar(latent_batches, desc="cooc: counting", unit="chunk", progress=progress)
    for batch in bar:
        acts = check_csr(_as_csr(batch), width)
        docs = getattr(batch, "doc_index_N", None)
        if docs is None and cfg.test == "document":
            raise _no_document_ids()
        if counter is None:
            width = acts.shape[1]
            counter = new_counter(width)
        if cfg.max_tokens is not None:
            left = cfg.max_tokens - counter.n_tokens_
            if left <= 0:
                break
            acts = acts[:left]
            docs = None if docs is None else docs[:left]
        counter.update(acts, docs_T=docs)
        bar.set_postfix(tokens=counter.n_tokens_, pairs=counter.n_pairs_, refresh=False)
    bar.close()
    if allow_empty and counter is None and width is not None:
        counter = new_counter(width)
    if allow_empty and counter is not None:
        return counter
    if counter is None or counter.n_tokens_ == 0:
        raise ConfigError("activations", "no tokens were counted (empty input, or every position masked)")
    return counter


def effective_test(cfg: CoocConfig, counter: CooccurrenceCounter) -> str:
    """The test cfg.test asks for on this counter's input: ``auto`` is document when every counted token had a
    document id, else binomial; an explicit document without ids is refused."""
    has_docs = counter.docs_ is not None
    if cfg.test == "auto":
        return "document" if has_docs else "binomial"
    if cfg.test == "document" and not has_docs:
        raise _no_document_ids()
    return cfg.test


def _no_document_ids() -> ConfigError:
    """cooc.test: document on an input without document ids (refused before counting, and again on a counter)."""
    return ConfigError("cooc.test", "document needs the document id of every counted token, which this input lacks "
                                    "(a CSR file without activations.documents); use auto or binomial")


def _first_tokens(latent_batches: Iterable[Any], max_tokens: int | None):
    """``(activations CSR, document ids or None)`` of the batches up to ``max_tokens`` rows in all: exactly the rows
    :func:`count` counts."""
    seen = 0
    for batch in latent_batches:
        acts, docs = _as_csr(batch), getattr(batch, "doc_index_N", None)
        if max_tokens is not None:
            if seen >= max_tokens:
                return
            acts = acts[:max_tokens - seen]
            docs = None if docs is None else docs[:max_tokens - seen]
        seen += acts.shape[0]
        yield acts, docs


def collect_second_pass(hubs: dict, pairs: tuple[np.ndarray, np.ndarray] | None, latent_batches: Iterable[Any],
                        threshold: float, theta_F, max_tokens: int | None, progress: bool = False):
    """The second pass over the counted rows: ``(GroupCofiring of hubs, PairDocuments of pairs or None)``; ``hubs``:
    group id -> (members, hub); ``pairs``: the (i, j) arrays whose per-document counts the bootstrap needs."""
    from cooc.cofiring import GroupCofiring
    from cooc.counting import binarise
    from cooc.stability import PairDocuments

    cof = GroupCofiring(hubs, threshold, theta_F)
    pair_docs = None if pairs is None else PairDocuments(*pairs)
    for acts, docs in progress_bar(_first_tokens(latent_batches, max_tokens), desc="cooc: second pass",
                                   unit="chunk", progress=progress):
        cof.update(acts)
        if pair_docs is not None and docs is not None:
            pair_docs.update(binarise(check_csr(acts, None), threshold, theta_F), docs)
    return cof, pair_docs


def second_pass(counter: CooccurrenceCounter, scored, table, finder: GroupFinder, cfg: CoocConfig, test: str,
                seed: int, collect):
    """groups.csv with the co-firing structure of every group (cooc.cofiring) and, with cfg.stability_replicates
    and document ids, its stability (cooc.stability). ``collect(hubs, pairs)`` runs the second pass over the counted
    tokens (:func:`collect_second_pass`, or its distributed form)."""
    import networkx as nx

    from cooc import stability
    from cooc.cofiring import annotate, hub_of

    groups = finder.groups_
    edges = scored.loc[scored["edge"], ["i", "j"]].to_numpy()
    by_group: dict[str, list[tuple[int, int]]] = {}
    for (i, j), g in zip(edges.tolist(), internal_edges(table, edges[:, 0], edges[:, 1])):
        if g is not None:
            by_group.setdefault(g, []).append((i, j))
    hubs, degree = {}, {}
    for g in groups:
        graph = nx.Graph(by_group.get(g.group_id, []))
        graph.add_nodes_from(g.members)
        hubs[g.group_id] = (g.members, hub_of(graph, counter.occ_F))
        degree[g.group_id] = int(graph.degree[hubs[g.group_id][1]])
    boot = cfg.stability_replicates > 0 and counter.docs_ is not None
    cand = scored.loc[stability.candidates(scored, cfg)] if boot else None
    cof, pair_docs = collect(hubs, None if cand is None else (cand["i"].to_numpy(), cand["j"].to_numpy()))
    table = annotate(table, cof, by_group, {g.group_id: g.structure for g in groups}, degree)
    if cfg.stability_replicates > 0:
        louvain = stability.louvain_stability(groups, scored, cfg, seed)
        table["stability_louvain"] = table["group_id"].map(louvain)
    if boot:
        n_FD, tokens_D = counter.docs_.matrix()
        ids = sorted(counter.docs_._ids, key=counter.docs_._ids.get)
        st = stability.bootstrap_stability(groups, cand, pair_docs, n_FD, tokens_D, ids, test, cfg, seed,
                                           cfg.stability_replicates)
        table["stability"] = table["group_id"].map({g: v[0] for g, v in st.items()})
        table["label_stability"] = table["group_id"].map({g: v[1] for g, v in st.items()})
    return table


def run_cooc(latent_batches: Iterable[Any], d_sae: int | None, cfg: CoocConfig, out_dir: str | Path | None,
             progress: bool = True, seed: int = 0, theta_F=None, extra: dict | None = None,
             heldout_batches: Iterable[Any] | None = None, rescan=None) -> CoocResult:
    """Count co-occurrences over ``latent_batches`` (CSR [tokens, d_sae] or LatentBatch), score
    the pairs, find groups and, when ``out_dir`` is given, write OUT/cooc/ files into it.

    ``theta_F``: the SAE's JumpReLU thresholds (added to cfg.threshold when cfg.use_sae_threshold).
    ``extra``: more entries for manifest.json (input description, experiment config, cache key).
    ``heldout_batches``: the held-out documents' latents, on which every edge is re-tested
    (cooc.replication); counted after the discovery part is analysed.
    ``rescan``: a function returning the discovery batches again, for the second pass that labels each group's
    structure from co-firing (cooc.cofiring) and measures its stability (cooc.stability); without it the labels
    are the edge graph's alone and there is no stability.
    """
    start = time.time()
    counter = count(latent_batches, d_sae, cfg, theta_F, progress)
    heldout = None
    if heldout_batches is not None and cfg.replication:
        heldout = lambda: count(heldout_batches, counter.d_sae, cfg, theta_F, progress, allow_empty=True)  # noqa: E731
    collect = None
    if rescan is not None:
        collect = lambda hubs, pairs: collect_second_pass(hubs, pairs, rescan(), counter.threshold,  # noqa: E731
                                                          counter.theta_F, cfg.max_tokens, progress)
    return analyse(counter, cfg, out_dir, seed=seed, extra=extra, start=start, heldout=heldout, collect=collect)


def _token_iid(counter: CooccurrenceCounter, cfg: CoocConfig, seed: int, min_count: int) -> dict:
    """Significant pairs, edges and groups under the token-iid binomial null with the same floors (what the
    document null is reported beside)."""
    scored = score_pairs(counter, min_occurrences=cfg.min_occurrences, test="binomial", min_count=min_count)
    finder = GroupFinder.from_config(cfg, seed).fit(scored)
    return {"null": NULLS["binomial"], "n_significant": int((scored["p_adj"].to_numpy() < cfg.alpha).sum()),
            "n_edges": int(finder.edge_mask_.sum()), "n_groups": len(finder.groups_),
            "largest_component": int(finder.largest_component_)}


def analyse(counter: CooccurrenceCounter, cfg: CoocConfig, out_dir: str | Path | None, seed: int = 0,
            extra: dict | None = None, start: float | None = None, heldout=None, collect=None) -> CoocResult:
    """Score, group and write the counts of a filled counter (the second half of :func:`run_cooc`;
    a distributed run calls it on rank 0 with the reduced counter). ``start``: time.time() at which
    counting began, for the manifest's wall time. ``result.pairs`` holds the pairs cfg.write_pairs keeps.
    ``heldout``: a filled counter of the held-out documents (or a function returning one, called once the
    discovery part is analysed), on which the edges are re-tested (cooc.replication). ``collect``: runs the second
    pass over the counted tokens (see :func:`second_pass`); without it the structure labels are the edge graph's
    and there is no stability.

    With ``method: significant`` only pairs with count >= cfg.min_count are scored and written (the
    others cannot be edges; they count as p = 1 in BH, see cooc.scoring), which bounds memory.
    """
    from cooc import replication

    start = time.time() if start is None else start
    if counter.n_tokens_ == 0:
        raise ConfigError("activations", "no tokens were counted (empty input, or every position masked)")
    test = effective_test(cfg, counter)
    min_count = cfg.min_count if cfg.method == "significant" else 1
    scored = score_pairs(counter, min_occurrences=cfg.min_occurrences, test=test, min_count=min_count)
    finder = GroupFinder.from_config(cfg, seed).fit(scored)
    scored["edge"] = finder.edge_mask_
    table = groups_frame(finder.groups_)
    if collect is not None and finder.groups_:
        table = second_pass(counter, scored, table, finder, cfg, test, seed, collect)
    token_iid = _token_iid(counter, cfg, seed, min_count) if test == "document" else None
    replicated = None
    if callable(heldout):
        heldout = heldout()
    if heldout is not None and heldout.n_tokens_ > 0:
        edges = scored.loc[scored["edge"], ["i", "j"]]
        rt = replication.retest(edges["i"].to_numpy(), edges["j"].to_numpy(), heldout, test, cfg.alpha)
        for col in replication.EDGE_COLUMNS:
            scored[col] = np.nan if col != "replicated" else False
            scored.loc[scored["edge"], col] = rt[col].to_numpy()
        per_group = replication.group_replication(table, edges["i"].to_numpy(), edges["j"].to_numpy(),
                                                  rt["replicated"].to_numpy())
        table = table.merge(per_group, on="group_id", how="left")
        replicated = replication.summary(rt, table, heldout, test)
    wall = time.time() - start
    manifest = {
        "stage": "cooc",
        "n_tokens": int(counter.n_tokens_),
        "d_sae": int(counter.d_sae),
        "threshold": counter.threshold,
        "sae_threshold_used": counter.theta_F is not None,
        "firing_rule": "activation > max(threshold, theta) (JumpReLU)" if counter.theta_F is not None else "activation > threshold",
        "test": test,
        "null": NULLS[test],
        "documents": counter.spread_.summary(),
        "min_documents_applied": counter.docs_ is not None,
        "token_iid": token_iid,
        "structure_from": "edge graph and co-firing (cooc.cofiring)" if "topology" in table else "edge graph",
        "replication": replicated,
        "n_active_latents": int((counter.occ_F > 0).sum()),
        "n_tested_latents": int(scored.attrs["n_tested"]),
        "n_pairs_stored": int(counter.n_pairs_),
        "n_pairs_tested_stored": int(scored.attrs["n_tested_stored"]),
        "n_pairs_scored": int(len(scored)),
        "family_size": int(scored.attrs["family_size"]),
        "n_pairs_pruned": int(counter.n_pruned_),
        "n_significant": int((scored["p_adj"].to_numpy() < cfg.alpha).sum()),
        "n_edges": int(finder.edge_mask_.sum()),
        "n_groups": len(finder.groups_),
        "method": cfg.method,
        "size_target_cut": finder.cut_,
        "size_target_converged": finder.converged_ if cfg.method == "size_target" else None,
        "largest_component": int(finder.largest_component_),
        "config": cfg.model_dump(),
        "seed": seed,
        "wall_time_s": round(wall, 3),
        "packages": package_versions(),
        "git_commit": git_commit(),
        **(extra or {}),
    }
    kept = {"tested": scored, "edges": scored[scored["edge"]], "none": None}[cfg.write_pairs]
    result = CoocResult(np.asarray(counter.occ_F).astype(np.int64), table, manifest, kept, counter=counter)
    if out_dir is not None:
        result.save(out_dir)
    return result
