"""Per-document firing counts, and the document-stratified null of a pair's co-occurrence.

Text is clustered: two latents that are independent at every token *given the document* still co-fire above the
token-iid expectation n_i n_j / N when both are topical (they share documents). The document-stratified null keeps
each latent's firing count in each document and treats the tokens *within* a document as exchangeable. Under it the
co-occurrence count in document d is Hypergeometric(N_d, n_id, n_jd), independent across documents, so

    E_ij = Σ_d n_id n_jd / N_d

and the pair's count X = Σ_d X_d has a moment generating function no larger than that of Poisson(E_ij) (a
hypergeometric is dominated in the convex order by the binomial with the same mean, which is dominated by the Poisson
(Hoeffding 1963)). The Chernoff bound of the Poisson law is therefore a valid one-sided p-value:

    P(X >= c) <= exp(c - E - c log(c / E))        for c > E   (1 for c <= E)

It is conservative (by a factor of about sqrt(2 pi c) against the exact Poisson tail) and never anti-conservative,
where a normal (Mantel-Haenszel) approximation is badly anti-conservative for the rare pairs that dominate an SAE's
pair family (E = 0.01, c = 1: the normal gives 5e-7, the exact tail is 0.01, this bound 0.027). BH on these
super-uniform p-values still controls the FDR (cooc.scoring).

:class:`DocumentCounts` accumulates n_id (sparse, latents x documents) and N_d while the counter streams; its memory is
one entry per (document, latent that fires in it), at most the activations' non-zeros.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sources.errors import ConfigError


class DocumentCounts:
    """Firing count of every latent in every document, and tokens per document (documents by id, any int64)."""

    def __init__(self, d_sae: int):
        self.d_sae = int(d_sae)
        self._ids: dict[int, int] = {}  # document id -> column
        self._parts: list[sp.csr_matrix] = []  # [d_sae, n_docs_so_far] partial counts
        self._tokens: list[int] = []  # tokens of each column's document

    def update(self, B_TF: sp.csr_matrix, docs_T: np.ndarray) -> None:
        """Add a binary chunk [tokens, d_sae] whose rows belong to documents ``docs_T`` (int64, one per row)."""
        docs_T = np.asarray(docs_T)
        if docs_T.shape != (B_TF.shape[0],):
            raise ConfigError("activations.documents", f"got {docs_T.shape[0] if docs_T.ndim else 0} document ids for "
                                                       f"{B_TF.shape[0]} token rows; give one id per counted token")
        if not len(docs_T):
            return
        uniq, local = np.unique(docs_T.astype(np.int64), return_inverse=True)
        cols = np.empty(len(uniq), dtype=np.int64)
        for k, d in enumerate(uniq.tolist()):
            if d not in self._ids:
                self._ids[d] = len(self._ids)
                self._tokens.append(0)
            cols[k] = self._ids[d]
        for c, n in zip(cols, np.bincount(local, minlength=len(uniq))):
            self._tokens[c] += int(n)
        row_doc = cols[local]
        M_TD = sp.csr_matrix((np.ones(len(row_doc), dtype=np.int64), (np.arange(len(row_doc)), row_doc)),
                             shape=(len(row_doc), len(self._ids)))
        part = sp.csr_matrix(B_TF.T.astype(np.int64) @ M_TD)  # [d_sae, n_docs]
        self._parts.append(part)
        if len(self._parts) >= 16:
            self._compact()

    def _tokens_array(self) -> np.ndarray:
        return np.asarray(self._tokens, dtype=np.int64)

    def _compact(self) -> None:
        n = len(self._ids)
        total = sp.csr_matrix((self.d_sae, n), dtype=np.int64)
        for p in self._parts:
            p = p.tocsr()
            p.resize((self.d_sae, n))
            total = total + p
        self._parts = [sp.csr_matrix(total)]

    def merge(self, other: "DocumentCounts") -> "DocumentCounts":
        """Add another accumulator's counts (documents with the same id are the same document)."""
        if other.d_sae != self.d_sae:
            raise ConfigError("cooc", "cannot merge document counts of different widths")
        n_F_D, tokens = other.matrix()
        ids = sorted(other._ids, key=other._ids.get)
        cols = np.empty(len(ids), dtype=np.int64)
        for k, d in enumerate(ids):
            if d not in self._ids:
                self._ids[d] = len(self._ids)
                self._tokens.append(0)
            cols[k] = self._ids[d]
            self._tokens[cols[k]] += int(tokens[k])
        coo = n_F_D.tocoo()
        self._parts.append(sp.csr_matrix((coo.data, (coo.row, cols[coo.col])), shape=(self.d_sae, len(self._ids))))
        self._compact()
        return self

    @property
    def n_documents(self) -> int:
        return len(self._ids)

    def matrix(self) -> tuple[sp.csr_matrix, np.ndarray]:
        """``(n_FD, tokens_D)``: CSR int64 firing counts [d_sae, n_docs] and int64 tokens per document."""
        if self._parts:
            self._compact()
        n = len(self._ids)
        m = self._parts[0] if self._parts else sp.csr_matrix((self.d_sae, n), dtype=np.int64)
        m.resize((self.d_sae, n))
        return sp.csr_matrix(m), self._tokens_array()


class TokenSpread:
    """Counted tokens per document id (any int64), for the manifest's spread: documents, largest share, effective
    number of documents 1 / Σ share²."""

    def __init__(self):
        self.tokens: dict[int, int] = {}

    def add(self, docs_T: np.ndarray) -> None:
        ids, n = np.unique(np.asarray(docs_T, dtype=np.int64), return_counts=True)
        for d, k in zip(ids.tolist(), n.tolist()):
            self.tokens[d] = self.tokens.get(d, 0) + k

    def merge(self, other: "TokenSpread") -> "TokenSpread":
        for d, k in other.tokens.items():
            self.tokens[d] = self.tokens.get(d, 0) + k
        return self

    def summary(self) -> dict:
        """{n_documents, largest_share, effective_documents}; None values when no document ids were seen."""
        t = np.fromiter(self.tokens.values(), dtype=np.float64, count=len(self.tokens))
        if not len(t) or t.sum() == 0:
            return {"n_documents": None, "largest_share": None, "effective_documents": None}
        share = t / t.sum()
        return {"n_documents": int(len(t)), "largest_share": round(float(share.max()), 6),
                "effective_documents": round(float(1.0 / np.sum(share ** 2)), 3)}


def document_expected(n_FD: sp.csr_matrix, tokens_D: np.ndarray, i: np.ndarray, j: np.ndarray,
                      chunk: int = 200_000, weights_D: np.ndarray | None = None) -> np.ndarray:
    """E_ij = Σ_d n_id n_jd / N_d for each pair (i[k], j[k]), in chunks of pairs (exact, vectorised); with
    ``weights_D`` (a document bootstrap's multiplicities, cooc.stability) Σ_d w_d n_id n_jd / N_d."""
    inv = np.zeros(len(tokens_D), dtype=np.float64)
    inv[tokens_D > 0] = 1.0 / tokens_D[tokens_D > 0]
    if weights_D is not None:
        inv *= np.asarray(weights_D, dtype=np.float64)
    A = sp.csr_matrix(n_FD, dtype=np.float64)
    A_scaled = sp.csr_matrix(A @ sp.diags(inv))
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        e = slice(s, s + chunk)
        out[e] = np.asarray(A[i[e]].multiply(A_scaled[j[e]]).sum(axis=1)).ravel()
    return out


def poisson_chernoff_tail(count: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Valid one-sided p-value P(X >= count) for X with an mgf at most Poisson(expected)'s: exp(c - E - c log(c/E))
    for c > E, else 1 (see the module doc)."""
    c = np.asarray(count, dtype=np.float64)
    E = np.asarray(expected, dtype=np.float64)
    p = np.ones_like(c)
    above = c > E
    with np.errstate(divide="ignore"):
        log_p = c[above] - E[above] - c[above] * (np.log(c[above]) - np.log(E[above]))
    p[above] = np.exp(log_p)  # E = 0 < c gives log_p = -inf: p = 0 (impossible under the null)
    return np.clip(p, 0.0, 1.0)
