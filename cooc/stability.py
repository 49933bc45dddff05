"""How stable each group is: under a bootstrap of the discovery documents, and under Louvain's seed and resolution.

**Document bootstrap.** A replicate draws the discovery documents with replacement (multiplicity w_d, multinomial,
seeded) and recomputes, for the *candidate pairs*, everything an edge depends on: counts c*_ij = Σ_d w_d c_ijd,
occurrences n*_i = Σ_d w_d n_id, tokens N* = Σ_d w_d N_d, the document-null expectation Σ_d w_d n_id n_jd / N_d
(or the token-iid binomial), the p-values with Benjamini-Hochberg over the replicate's whole family, the floors and
the document support (documents drawn at least once in which the pair co-fires); then it finds groups as the stage
does. A group's ``stability`` is its best-match Jaccard with the replicate's groups, averaged over replicates;
``label_stability`` the share of replicates whose best match has the group's edge-graph label (cooc.structure; the
co-firing label needs a pass over tokens, which a reweighting cannot give).

Candidate pairs (:func:`candidates`) are the pairs that could plausibly become edges: scored pairs with
p_adj < CANDIDATE_P and NPMI >= min_npmi - CANDIDATE_NPMI_MARGIN. Their per-document counts c_ijd come from the same
second pass over the discovery tokens as the co-firing metrics (:class:`PairDocuments`). A pair outside them is
never an edge in a replicate, so the stability is that of the groups among plausible edges (a replicate can only
lose, never gain, far-from-threshold edges).

**Louvain sensitivity.** Groups above max_group_size are Louvain parts, so their membership depends on its seed and
resolution. ``stability_louvain`` is a group's best-match Jaccard with the groups found on the same pairs with
seeds 1..LOUVAIN_SEEDS and resolutions LOUVAIN_RESOLUTIONS, averaged (1 for groups that are whole components).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cooc.documents import document_expected
from cooc.groups import GroupFinder
from cooc.scoring import pair_stats
from stats.multiple import bh_adjust

CANDIDATE_P = 0.5
CANDIDATE_NPMI_MARGIN = 0.1
LOUVAIN_SEEDS = 5
LOUVAIN_RESOLUTIONS = (0.5, 2.0)


def candidates(scored: pd.DataFrame, cfg) -> np.ndarray:
    """Boolean mask of the scored pairs a bootstrap replicate re-tests (module doc); every edge is one."""
    mask = (scored["p_adj"].to_numpy() < CANDIDATE_P) & (scored["npmi"].to_numpy() >= cfg.min_npmi - CANDIDATE_NPMI_MARGIN)
    return mask | scored["edge"].to_numpy(dtype=bool)


class PairDocuments:
    """Per-document co-occurrence counts of a fixed set of pairs (i[k], j[k]), accumulated over binary chunks
    (documents by id, any int64; a document may come in several chunks or from several accumulators)."""

    def __init__(self, i: np.ndarray, j: np.ndarray):
        self.i, self.j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        self._rows: list[np.ndarray] = []  # document id of each entry
        self._cols: list[np.ndarray] = []  # pair index
        self._vals: list[np.ndarray] = []

    def update(self, B_TF: sp.csr_matrix, docs_T: np.ndarray) -> "PairDocuments":
        """Add a binary chunk [tokens, d_sae] whose rows belong to documents ``docs_T``."""
        if not len(self.i) or B_TF.shape[0] == 0:
            return self
        Bc = sp.csc_matrix(B_TF, dtype=np.int64)
        S_TP = Bc[:, self.i].multiply(Bc[:, self.j]).tocsr()  # 1 where both latents of pair k fire at token t
        uniq, local = np.unique(np.asarray(docs_T, dtype=np.int64), return_inverse=True)
        M_DT = sp.csr_matrix((np.ones(len(local), dtype=np.int64), (local, np.arange(len(local)))),
                             shape=(len(uniq), len(local)))
        part = sp.coo_matrix(M_DT @ S_TP)
        self._rows.append(uniq[part.row])
        self._cols.append(part.col.astype(np.int64))
        self._vals.append(part.data.astype(np.int64))
        return self

    def merge(self, other: "PairDocuments") -> "PairDocuments":
        self._rows += other._rows
        self._cols += other._cols
        self._vals += other._vals
        return self

    def matrix(self, doc_ids) -> sp.csr_matrix:
        """Counts [len(doc_ids), n_pairs] with rows in the order of ``doc_ids`` (documents never seen: zero rows)."""
        doc_ids = np.asarray(doc_ids, dtype=np.int64)
        if not self._rows:
            return sp.csr_matrix((len(doc_ids), len(self.i)), dtype=np.int64)
        rows, cols, vals = (np.concatenate(x) for x in (self._rows, self._cols, self._vals))
        order = np.argsort(doc_ids, kind="stable")
        pos = np.minimum(np.searchsorted(doc_ids[order], rows), len(doc_ids) - 1)
        known = doc_ids[order][pos] == rows
        out = sp.csr_matrix((vals[known], (order[pos[known]], cols[known])), shape=(len(doc_ids), len(self.i)))
        out.sum_duplicates()
        return out


def _replicate_table(w_D, cand: pd.DataFrame, C_DP, n_FD, tokens_D, test: str, min_occurrences: int) -> pd.DataFrame:
    """The candidate pairs' statistics (the stage's: cooc.scoring.pair_stats) on the documents reweighted by w_D."""
    i, j = cand["i"].to_numpy(), cand["j"].to_numpy()
    c = np.asarray(C_DP.T @ w_D).ravel()
    n_F = np.asarray(n_FD @ w_D).ravel()
    N = float(tokens_D @ w_D)
    K = int((n_F >= min_occurrences).sum())
    ni, nj = n_F[i], n_F[j]
    e_doc = document_expected(n_FD, tokens_D, i, j, weights_D=w_D) if test == "document" else None
    with np.errstate(divide="ignore", invalid="ignore"):
        st = pair_stats(c, ni, nj, N, test, e_doc)
    tested = (ni >= min_occurrences) & (nj >= min_occurrences) & (c > 0)
    p = np.where(tested, np.nan_to_num(st["p_value"], nan=1.0), 1.0)
    support = np.asarray(((C_DP > 0).astype(np.int64)).T @ (w_D > 0).astype(np.int64)).ravel()
    return pd.DataFrame({"i": i, "j": j, "count": c, "documents": support, "jaccard": np.nan_to_num(st["jaccard"]),
                         "npmi": np.nan_to_num(st["npmi"], nan=-1.0), "p_adj": bh_adjust(p, max(K * (K - 1) // 2, len(p)))})


def _best_match(groups: list, found: list) -> list[tuple[float, str]]:
    """For each group, (best-match Jaccard with ``found``, that match's label)."""
    sets = [(set(f.members), f.structure.structure) for f in found]
    out = []
    for g in groups:
        mine = set(g.members)
        best, label = 0.0, ""
        for members, lab in sets:
            inter = len(mine & members)
            if inter:
                jac = inter / len(mine | members)
                if jac > best:
                    best, label = jac, lab
        out.append((best, label))
    return out


def bootstrap_stability(groups: list, cand: pd.DataFrame, pair_docs: PairDocuments, n_FD, tokens_D, doc_ids: list[int],
                        test: str, cfg, seed: int, n_boot: int) -> dict[str, tuple[float, float]]:
    """group id -> (stability, label_stability) over ``n_boot`` document-bootstrap replicates (module doc)."""
    C_DP = pair_docs.matrix(doc_ids)
    rng = np.random.default_rng([seed, 0xB007])
    D = len(doc_ids)
    jac = np.zeros((n_boot, len(groups)))
    same = np.zeros((n_boot, len(groups)))
    finder = GroupFinder.from_config(cfg, seed)
    for b in range(n_boot):
        w = rng.multinomial(D, np.full(D, 1.0 / D)).astype(np.float64)
        table = _replicate_table(w, cand, C_DP, n_FD, tokens_D, test, cfg.min_occurrences)
        found = finder.fit(table).groups_
        for k, ((best, label), g) in enumerate(zip(_best_match(groups, found), groups)):
            jac[b, k] = best
            same[b, k] = label == g.structure.structure
    return {g.group_id: (float(jac[:, k].mean()), float(same[:, k].mean())) for k, g in enumerate(groups)}


def louvain_stability(groups: list, scored: pd.DataFrame, cfg, seed: int) -> dict[str, float]:
    """group id -> mean best-match Jaccard with the groups of other Louvain seeds and resolutions (module doc)."""
    runs = [GroupFinder.from_config(cfg, seed + s).fit(scored).groups_ for s in range(1, LOUVAIN_SEEDS + 1)]
    for r in LOUVAIN_RESOLUTIONS:
        f = GroupFinder.from_config(cfg, seed)
        f.resolution = r
        runs.append(f.fit(scored).groups_)
    scores = np.array([[b for b, _ in _best_match(groups, found)] for found in runs])
    return {g.group_id: float(scores[:, k].mean()) for k, g in enumerate(groups)}
