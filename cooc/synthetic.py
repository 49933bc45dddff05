"""Synthetic latent activations for tests and benchmarks (seeded, no model needed).

* :func:`heavy_tailed_rates`: per-latent firing probabilities with a log-normal spread, like a
  real SAE's firing-frequency histogram (most latents rare, a few fire on many tokens).
* :func:`independent_chunk`: a CSR chunk where every latent fires independently at its rate.
* :func:`planted`: independent background latents plus planted hub-and-spoke, clique and
  chain groups whose members co-occur far above chance.
* :func:`document_clustered`: latents independent given the document, with topic-dependent rates: the null of
  clustered text, on which every co-occurrence edge is false.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp


def heavy_tailed_rates(d_sae: int, l0: float, sigma: float = 1.5, max_rate: float = 0.5,
                       seed: int = 0) -> np.ndarray:
    """Firing probability per latent: log-normal weights (σ in natural-log units) scaled to sum ≈ l0."""
    rng = np.random.default_rng(seed)
    w_F = np.exp(rng.normal(0.0, sigma, d_sae))
    rate_F = np.minimum(l0 * w_F / w_F.sum(), max_rate)
    return rate_F


def independent_chunk(rate_F: np.ndarray, n_tokens: int, rng: np.random.Generator,
                      dtype=np.float32) -> sp.csr_matrix:
    """CSR [n_tokens, d_sae]: latent i fires at each token independently with prob ≈ rate_F[i].

    Positive activations (1 + Exp(1)); positions are drawn with replacement and de-duplicated,
    which lowers the effective rate of very frequent latents slightly (1 - e^{-rate}).
    """
    d_sae = rate_F.shape[0]
    n_F = rng.binomial(n_tokens, rate_F)
    lat = np.repeat(np.arange(d_sae, dtype=np.int32), n_F)
    tok = rng.integers(0, n_tokens, lat.shape[0], dtype=np.int64)
    key = np.unique(tok * d_sae + lat)
    tok, lat = key // d_sae, (key % d_sae).astype(np.int32)
    vals = (1.0 + rng.exponential(1.0, key.shape[0])).astype(dtype)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(tok, minlength=n_tokens))])
    return sp.csr_matrix((vals, lat, indptr), shape=(n_tokens, d_sae))


@dataclass
class PlantedData:
    """Activations and the ground truth they were generated from."""

    acts_TF: sp.csr_matrix
    groups: list[list[int]]
    """Planted groups (sorted latent ids)."""
    kinds: list[str]
    """Planted structure per group: hub_spoke, clique or chain."""
    rate_F: np.ndarray = field(repr=False)
    """Background firing rate of every latent."""


def planted(d_sae: int = 3000, n_tokens: int = 40_000, l0: float = 30.0, n_hubs: int = 4,
            n_cliques: int = 4, n_chains: int = 2, seed: int = 0, n_parents: int = 0) -> PlantedData:
    """Independent heavy-tailed background plus planted groups on disjoint random latents.

    * hub_spoke (1 hub + 6-12 spokes): the hub fires at rate 2-5%; whenever it fires, exactly one
      spoke (chosen uniformly) also fires with prob. 0.9. Spokes never co-fire (ambiguity-like).
    * clique (4-8 members): a hidden context fires at 1-3%; each member fires with prob. 0.8.
    * chain (5-7 members): hidden causes z_1..z_{n-1} at 1-2%; member k fires when z_{k-1} or z_k
      does (prob. 0.9 each), so only neighbours share a cause.
    * parent_child (2 members; ``n_parents``, drawn after the others so earlier groups do not change): the parent
      fires at 2-4 %; the child fires only with it, on 30 % of its tokens (P(parent | child) = 1), and where both
      fire both activations are halved (activation splitting, as in feature absorption). The child has no
      background firing.
    Planted latents keep their own background firing on top (but the children).
    """
    rng = np.random.default_rng(seed)
    rate_F = heavy_tailed_rates(d_sae, l0, seed=seed + 1)
    base = independent_chunk(rate_F, n_tokens, rng).tocoo()
    rows, cols = [base.row], [base.col]
    perm = rng.permutation(d_sae)
    pos = 0
    groups, kinds = [], []

    def take(n):
        nonlocal pos
        ids = perm[pos:pos + n]
        pos += n
        return ids

    for _ in range(n_hubs):
        ids = take(1 + int(rng.integers(6, 13)))
        hub, spokes = ids[0], ids[1:]
        on = np.flatnonzero(rng.random(n_tokens) < rng.uniform(0.02, 0.05))
        rows.append(on)
        cols.append(np.full(on.shape[0], hub))
        hit = on[rng.random(on.shape[0]) < 0.9]
        rows.append(hit)
        cols.append(spokes[rng.integers(0, spokes.shape[0], hit.shape[0])])
        groups.append(sorted(ids.tolist()))
        kinds.append("hub_spoke")
    for _ in range(n_cliques):
        ids = take(int(rng.integers(4, 9)))
        on = np.flatnonzero(rng.random(n_tokens) < rng.uniform(0.01, 0.03))
        for m in ids:
            hit = on[rng.random(on.shape[0]) < 0.8]
            rows.append(hit)
            cols.append(np.full(hit.shape[0], m))
        groups.append(sorted(ids.tolist()))
        kinds.append("clique")
    for _ in range(n_chains):
        ids = take(int(rng.integers(5, 8)))
        causes = [np.flatnonzero(rng.random(n_tokens) < rng.uniform(0.01, 0.02)) for _ in range(len(ids) - 1)]
        for k, m in enumerate(ids):
            mine = [causes[c] for c in (k - 1, k) if 0 <= c < len(causes)]
            on = np.concatenate(mine)
            hit = on[rng.random(on.shape[0]) < 0.9]
            rows.append(hit)
            cols.append(np.full(hit.shape[0], m))
        groups.append(sorted(ids.tolist()))
        kinds.append("chain")
    halve = []
    for _ in range(n_parents):
        parent, child = take(2)
        rows[0], cols[0] = rows[0][cols[0] != child], cols[0][cols[0] != child]  # the child has no background
        on = np.flatnonzero(rng.random(n_tokens) < rng.uniform(0.02, 0.04))
        both = on[rng.random(on.shape[0]) < 0.3]
        rows += [on, both]
        cols += [np.full(on.shape[0], parent), np.full(both.shape[0], child)]
        halve.append((both, parent, child))
        groups.append(sorted([int(parent), int(child)]))
        kinds.append("parent_child")
    r, c = np.concatenate(rows), np.concatenate(cols)
    vals = (1.0 + rng.exponential(1.0, r.shape[0])).astype(np.float32)
    acts = sp.coo_matrix((vals, (r, c)), shape=(n_tokens, d_sae)).tocsr()
    acts.sum_duplicates()
    if halve:
        acts = acts.tolil()
        for both, parent, child in halve:
            for col in (parent, child):
                acts[both, col] = acts[both, col].toarray() * 0.5
        acts = acts.tocsr()
    return PlantedData(acts, groups, kinds, rate_F)


@dataclass
class ClusteredData:
    """Activations of latents independent given the document, with each token's document."""

    acts_TF: sp.csr_matrix
    docs_T: np.ndarray
    """int64 document id of every row (documents are contiguous runs of rows, as in a stream)."""
    topic_D: np.ndarray = field(repr=False)


def document_clustered(d_sae: int = 300, n_docs: int = 200, tokens_per_doc: int = 100, l0: float = 6.0,
                       n_topics: int = 5, topic_sigma: float = 2.0, seed: int = 0) -> ClusteredData:
    """A realistic null for co-occurrence: text clustered by document and topic, no latent pair linked at a token.

    Each document has a topic; latent f fires at each of its tokens independently with the rate
    ``base_f * exp(topic_sigma * z_{topic, f})`` (``z`` standard normal, rates renormalised to mean ``base_f`` and
    capped at 0.5): many latents are topical, so independent latents co-fire above the token-iid expectation
    because they share documents. Given the document every latent fires independently at every token, so no pair
    co-occurs beyond what the documents explain: every edge a test finds here is false.
    """
    rng = np.random.default_rng(seed)
    base_F = heavy_tailed_rates(d_sae, l0, seed=seed + 1)
    z_KF = rng.normal(size=(n_topics, d_sae))
    w_KF = np.exp(topic_sigma * z_KF)
    rate_KF = np.minimum(base_F * w_KF / w_KF.mean(axis=0), 0.5)
    topic_D = rng.integers(0, n_topics, n_docs)
    parts = [independent_chunk(rate_KF[topic_D[d]], tokens_per_doc, rng) for d in range(n_docs)]
    docs_T = np.repeat(np.arange(n_docs, dtype=np.int64), tokens_per_doc)
    return ClusteredData(sp.vstack(parts, format="csr"), docs_T, topic_D)
