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
from cooc.groups import GroupFinder, groups_frame
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
            raise ConfigError("cooc.test", "document needs the document id of every counted token, which this input "
                                           "lacks (a CSR file without activations.documents); use binomial")
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
        raise ConfigError("cooc.test", "document needs the document id of every counted token, which this input "
                                       "lacks (a CSR file without activations.documents); use auto or binomial")
    return cfg.test


def run_cooc(latent_batches: Iterable[Any], d_sae: int | None, cfg: CoocConfig, out_dir: str | Path | None,
             progress: bool = True, seed: int = 0, theta_F=None, extra: dict | None = None,
             heldout_batches: Iterable[Any] | None = None) -> CoocResult:
    """Count co-occurrences over ``latent_batches`` (CSR [tokens, d_sae] or LatentBatch), score
    the pairs, find groups and, when ``out_dir`` is given, write OUT/cooc/ files into it.

    ``theta_F``: the SAE's JumpReLU thresholds (added to cfg.threshold when cfg.use_sae_threshold).
    ``extra``: more entries for manifest.json (input description, experiment config, cache key).
    ``heldout_batches``: the held-out documents' latents, on which every edge is re-tested
    (cooc.replication); counted after the discovery part is analysed.
    """
    start = time.time()
    counter = count(latent_batches, d_sae, cfg, theta_F, progress)
    heldout = None
    if heldout_batches is not None and cfg.replication:
        heldout = lambda: count(heldout_batches, counter.d_sae, cfg, theta_F, progress, allow_empty=True)  # noqa: E731
    return analyse(counter, cfg, out_dir, seed=seed, extra=extra, start=start, heldout=heldout)


def _token_iid(counter: CooccurrenceCounter, cfg: CoocConfig, seed: int, min_count: int) -> dict:
    """Significant pairs, edges and groups under the token-iid binomial null with the same floors (what the
    document null is reported beside)."""
    scored = score_pairs(counter, min_occurrences=cfg.min_occurrences, test="binomial", min_count=min_count)
    finder = GroupFinder.from_config(cfg, seed).fit(scored)
    return {"null": NULLS["binomial"], "n_significant": int((scored["p_adj"].to_numpy() < cfg.alpha).sum()),
            "n_edges": int(finder.edge_mask_.sum()), "n_groups": len(finder.groups_),
            "largest_component": int(finder.largest_component_)}


def analyse(counter: CooccurrenceCounter, cfg: CoocConfig, out_dir: str | Path | None, seed: int = 0,
            extra: dict | None = None, start: float | None = None, heldout=None) -> CoocResult:
    """Score, group and write the counts of a filled counter (the second half of :func:`run_cooc`;
    a distributed run calls it on rank 0 with the reduced counter). ``start``: time.time() at which
    counting began, for the manifest's wall time. ``result.pairs`` holds the pairs cfg.write_pairs keeps.
    ``heldout``: a filled counter of the held-out documents (or a function returning one, called once the
    discovery part is analysed), on which the edges are re-tested (cooc.replication).

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
        "replication": replicated,
        "n_active_latents": int((counter.occ_F > 0).sum()),
        "n_tested_latents": int(scored.attrs["n_tested"]),
        "n_pairs_stored": int(counter.n_pairs_),
        "n_pairs_tested_stored": int(scored.attrs["n_tested_stored"]),
        "n_pairs_scored": int(len(scored)),
        "family_size": int(scored.attrs["family_size"]),
        "n_pairs_pruned": int(counter.n_pruned_),
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
