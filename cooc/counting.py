"""Exact, streaming co-occurrence counts of binarised SAE latents.

A latent fires at a token when its activation is > ``max(threshold, θ_F)`` (θ_F the SAE's own
JumpReLU threshold, where it has one; ``sources.sae_view.firing_threshold``). For every chunk of tokens the binary matrix
``B_TF`` gives the upper triangle of ``Bᵀ B`` by sparse matrix products (scipy CSR @ CSR), so
the work is Σ_tokens L0² and never d_sae². Pair counts are stored sparse: the latent range
is split into row shards (balanced for the upper triangle) and each shard keeps a short stack
of canonical CSR "runs" that are added together whenever the newer run is at least half the
size of the older one (a log-structured merge). Memory is therefore ~8 bytes per *distinct*
co-occurring pair (int32 column + int32 count) plus one shard's merge buffer; time is
Σ L0² plus O(pairs · log chunks) for merging.

Counters built on separate chunks or processes combine exactly with :meth:`merge` or ``+``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from sources.errors import ConfigError
from cooc.documents import DocumentCounts, TokenSpread
from sources.sae_view import fires, firing_threshold

_INT32_MAX = np.iinfo(np.int32).max


def check_csr(latents, d_sae: int | None, field: str = "activations") -> sp.csr_matrix:
    """Return ``latents`` as a canonical scipy CSR matrix, or raise ConfigError naming the problem."""
    if not sp.issparse(latents):
        raise ConfigError(field, f"expected a scipy sparse CSR matrix [n_tokens, d_sae], got {type(latents).__name__}")
    if latents.format != "csr":
        raise ConfigError(field, f"expected a CSR matrix, got {latents.format.upper()}; convert it with .tocsr()")
    if latents.ndim != 2:
        raise ConfigError(field, f"expected a 2-d matrix [n_tokens, d_sae], got shape {latents.shape}")
    if d_sae is not None and latents.shape[1] != d_sae:
        raise ConfigError(field, f"has {latents.shape[1]} latent columns but the SAE width is d_sae={d_sae}")
    if not np.issubdtype(latents.dtype, np.number) or np.issubdtype(latents.dtype, np.complexfloating):
        raise ConfigError(field, f"activations must be real numbers, got dtype {latents.dtype}")
    latents = sp.csr_matrix(latents)
    if latents.nnz and not np.all(np.isfinite(latents.data)):
        bad = np.flatnonzero(~np.isfinite(latents.data))
        row = int(np.searchsorted(latents.indptr, bad[0], side="right") - 1)
        raise ConfigError(field, f"activations contain {bad.size} NaN or infinite value(s), first at row {row} "
                                 f"(token), column {int(latents.indices[bad[0]])} (latent)")
    if not latents.has_canonical_format:
        latents = latents.copy()
        latents.sum_duplicates()
    return latents


def check_theta(theta_F, d_sae: int) -> np.ndarray | None:
    """Validate the per-latent JumpReLU thresholds θ_F (None: the SAE has none)."""
    if theta_F is None:
        return None
    theta_F = np.asarray(theta_F, dtype=np.float64)
    if theta_F.shape != (d_sae,):
        raise ConfigError("sae", f"JumpReLU thresholds have shape {theta_F.shape}, expected ({d_sae},)")
    if not np.all(np.isfinite(theta_F)) or np.any(theta_F < 0):
        raise ConfigError("sae", "JumpReLU thresholds must be finite and >= 0")
    return theta_F


def binarise(latents_TF: sp.csr_matrix, threshold: float, theta_F: np.ndarray | None = None,
             keep_T: np.ndarray | None = None) -> sp.csr_matrix:
    """Binary int32 CSR ``B_TF``: 1 where activation > max(threshold, θ_F); rows with keep_T False removed."""
    if keep_T is not None:
        keep_T = np.asarray(keep_T, dtype=bool)
        if keep_T.shape != (latents_TF.shape[0],):
            raise ConfigError("mask", f"mask has shape {keep_T.shape}, expected ({latents_TF.shape[0]},)")
        latents_TF = latents_TF[keep_T]
    fired_TF = fires(latents_TF, firing_threshold(threshold, theta_F))
    return sp.csr_matrix((np.ones(fired_TF.nnz, dtype=np.int32), fired_TF.indices, fired_TF.indptr), shape=latents_TF.shape)


def shard_bounds(d_sae: int, n_shards: int) -> np.ndarray:
    """Row boundaries splitting the upper triangle of a d_sae² matrix into equal-area shards."""
    s = np.arange(n_shards + 1) / n_shards
    bounds = np.round(d_sae * (1.0 - np.sqrt(1.0 - s))).astype(np.int64)
    bounds[-1] = d_sae
    return np.unique(bounds)


def _upper(prod: sp.csr_matrix) -> sp.csr_matrix:
    """Keep entries strictly above the diagonal of a shard product (local col > local row)."""
    rows = np.repeat(np.arange(prod.shape[0]), np.diff(prod.indptr))
    keep = prod.indices > rows
    per_row = np.bincount(rows[keep], minlength=prod.shape[0])
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    out = sp.csr_matrix((prod.data[keep], prod.indices[keep], indptr), shape=prod.shape)
    out.sort_indices()
    return out


def _prune(run: sp.csr_matrix, below: int) -> sp.csr_matrix:
    run = run.copy()
    run.data[run.data < below] = 0
    run.eliminate_zeros()
    return run


def _document_starts(docs_T: np.ndarray) -> np.ndarray:
    """First row of each run of equal document ids (rows of one document are contiguous)."""
    return np.concatenate([[0], np.flatnonzero(docs_T[1:] != docs_T[:-1]) + 1])


@dataclass
class UpperPairs:
    """Stored pairs i < j with their co-occurrence counts, sorted by (i, j)."""

    i: np.ndarray
    j: np.ndarray
    count: np.ndarray


class CooccurrenceCounter:
    """Streaming exact co-occurrence counter (sklearn-style: ``update`` then read ``*_`` attributes).

    ``threshold``: absolute firing threshold (fires when activation > max(threshold, θ_F)).
    ``theta_F``: per-latent JumpReLU thresholds or None. ``prune_below``/``prune_every``: optional
    lossy mode that drops pairs with a running count below ``prune_below`` every ``prune_every``
    updates (counts of the kept pairs then are lower bounds). ``n_shards``: row shards of the
    pair store (default d_sae // 1024, at most 64; more shards skip more of the lower triangle).
    """

    def __init__(self, d_sae: int, threshold: float = 0.0, theta_F=None, prune_below: int = 0,
                 prune_every: int = 64, n_shards: int | None = None, per_document: bool = True):
        if not isinstance(d_sae, (int, np.integer)) or d_sae < 1:
            raise ConfigError("cooc.d_sae", f"must be a positive integer, got {d_sae!r}")
        if not np.isfinite(threshold) or threshold < 0:
            raise ConfigError("cooc.threshold", f"must be a finite number >= 0, got {threshold!r}")
        if prune_below < 0 or prune_every < 1:
            raise ConfigError("cooc.prune_below", "prune_below must be >= 0 and prune_every >= 1")
        self.d_sae = int(d_sae)
        self.threshold = float(threshold)
        self.theta_F = check_theta(theta_F, self.d_sae)
        self.prune_below = int(prune_below)
        self.prune_every = int(prune_every)
        n_shards = n_shards or max(1, min(64, self.d_sae // 1024))
        self.bounds_ = shard_bounds(self.d_sae, n_shards)
        self._runs: list[list[sp.csr_matrix]] = [[] for _ in range(len(self.bounds_) - 1)]
        self._dtype = np.int32
        self.n_tokens_ = 0
        self.n_updates_ = 0
        self.n_pruned_ = 0
        self.occ_F = np.zeros(self.d_sae, dtype=np.int64)
        self.per_document = bool(per_document)
        self.docs_: DocumentCounts | None = None
        """Per-document firing counts (cooc.documents), when every update gave the rows' document ids and
        ``per_document`` (what the document-stratified null needs; one entry per latent firing in a document)."""
        self.spread_ = TokenSpread()
        """Counted tokens per document id (empty when no update gave document ids)."""
        self._with_docs: bool | None = None  # whether the updates give document ids
        self._support: CooccurrenceCounter | None = None  # documents as units: see support_
        self._pending: tuple[sp.csr_matrix, np.ndarray] | None = None  # rows of the document still open
        self._done_docs: set[int] = set()

    # ----------------------------------------------------------------------------- counting
    def update(self, latents_TF, keep_T=None, docs_T=None) -> "CooccurrenceCounter":
        """Count one chunk: CSR activations [tokens, d_sae]; ``keep_T`` optionally masks rows out; ``docs_T`` the
        document id of every row (int64), which the document-stratified null needs (give it on every update)."""
        latents_TF = check_csr(latents_TF, self.d_sae)
        B_TF = binarise(latents_TF, self.threshold, self.theta_F, keep_T)
        if self._with_docs is not None and self._with_docs != (docs_T is not None):
            raise ConfigError("activations", "document ids were given for some chunks but not others; give them for "
                                             "every chunk or none")
        self._with_docs = docs_T is not None
        if docs_T is not None:
            docs_T = np.asarray(docs_T)
            if keep_T is not None:
                docs_T = docs_T[np.asarray(keep_T, dtype=bool)]
            if self.per_document:
                if self.docs_ is None:
                    self.docs_ = DocumentCounts(self.d_sae)
                self.docs_.update(B_TF, docs_T)
                self._support_update(B_TF, docs_T)
            self.spread_.add(docs_T)
        self._count_binary(B_TF)
        return self

    def _count_binary(self, B_TF: sp.csr_matrix) -> None:
        self.reserve(self.n_tokens_ + B_TF.shape[0])
        self.n_tokens_ += B_TF.shape[0]
        self.n_updates_ += 1
        self.occ_F += np.bincount(B_TF.indices, minlength=self.d_sae)
        if B_TF.nnz:
            B_TF = B_TF.astype(self._dtype)
            Bc = B_TF.tocsc()
            Bt_FT = sp.csr_matrix((Bc.data, Bc.indices, Bc.indptr), shape=(self.d_sae, B_TF.shape[0]))
            for s in range(len(self._runs)):
                r0, r1 = int(self.bounds_[s]), int(self.bounds_[s + 1])
                left = Bt_FT[r0:r1]
                if left.nnz == 0:
                    continue
                right = B_TF[:, r0:] if r0 else B_TF
                prod = _upper(sp.csr_matrix(left @ right))
                if prod.nnz:
                    self.add_shard(s, prod)
        if self.prune_below > 0 and self.n_updates_ % self.prune_every == 0:
            self.prune(self.prune_below)

    # ------------------------------------------------------------------ document support
    def _support_update(self, B_TF: sp.csr_matrix, docs_T: np.ndarray) -> None:
        """Count, for every pair, the documents in which it co-fires at some token. A document's rows must come
        contiguously (as the stream gives them; cooc.inputs sorts a file's rows by document): the rows of the
        document still open at the end of a chunk wait for the next chunk."""
        docs_T = np.asarray(docs_T, dtype=np.int64)
        if self._pending is not None:
            B_TF = sp.csr_matrix(sp.vstack([self._pending[0], B_TF]))
            docs_T = np.concatenate([self._pending[1], docs_T])
            self._pending = None
        if not len(docs_T):
            return
        starts = _document_starts(docs_T)
        run_ids = docs_T[starts].tolist()
        repeated = [d for d in run_ids if d in self._done_docs]
        if repeated or len(set(run_ids)) < len(run_ids):
            d = repeated[0] if repeated else next(x for x in run_ids if run_ids.count(x) > 1)
            raise ConfigError("activations.documents", f"the rows of document {d} come in separate pieces; give each "
                                                       "document's rows contiguously (sort the rows by document id)")
        cut = int(starts[-1])
        self._pending = (B_TF[cut:], docs_T[cut:])
        if cut:
            self._count_documents(B_TF[:cut], docs_T[:cut])

    def _flush_support(self) -> None:
        """Count the document left open by the last update (every read of the support calls it)."""
        if self._pending is not None:
            B_TF, docs_T = self._pending
            self._pending = None
            if len(docs_T):
                self._count_documents(B_TF, docs_T)

    def _count_documents(self, B_TF: sp.csr_matrix, docs_T: np.ndarray) -> None:
        """Add whole documents (contiguous rows) to the support store: its "tokens" are documents, its
        occurrences the documents a latent fires in, its pair counts the documents a pair co-fires in."""
        starts = _document_starts(docs_T)
        self._done_docs.update(docs_T[starts].tolist())
        g_T = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(docs_T))))  # local document of each row
        self.support_store()._add_documents(B_TF, g_T, len(starts))

    def support_store(self) -> "CooccurrenceCounter":
        """The support store, created empty (same shards as the pair store) on first use."""
        if self._support is None:
            self._support = CooccurrenceCounter(self.d_sae, per_document=False)
            self._support.bounds_ = self.bounds_.copy()
            self._support._runs = [[] for _ in range(len(self.bounds_) - 1)]
        return self._support

    def _add_documents(self, B_TF: sp.csr_matrix, g_T: np.ndarray, n_docs: int) -> None:
        """(Support store) add ``n_docs`` documents: rows of ``B_TF`` belong to local document ``g_T``. For row
        shard [r0, r1) the product of the (document, latent)-indexed transpose with B gives, per document, the
        co-firing counts of the shard's pairs; each distinct (document, i, j) adds one to pair (i, j)."""
        F = self.d_sae
        self.reserve(self.n_tokens_ + n_docs)
        self.n_tokens_ += n_docs
        self.n_updates_ += 1
        coo = B_TF.tocoo()
        doc_of = g_T[coo.row].astype(np.int64)
        self.occ_F += np.bincount(np.unique(doc_of * F + coo.col) % F, minlength=F)
        for s in range(len(self._runs)):
            r0, r1 = int(self.bounds_[s]), int(self.bounds_[s + 1])
            sel = (coo.col >= r0) & (coo.col < r1)
            if not sel.any():
                continue
            w = r1 - r0
            left = sp.csr_matrix((np.ones(int(sel.sum()), dtype=np.int32),
                                  (doc_of[sel] * w + (coo.col[sel] - r0), coo.row[sel])), shape=(n_docs * w, B_TF.shape[0]))
            right = B_TF[:, r0:] if r0 else B_TF
            prod = sp.coo_matrix(left @ right)
            rows, cols = prod.row % w, prod.col
            keep = cols > rows
            if not keep.any():
                continue
            inc = sp.csr_matrix((np.ones(int(keep.sum()), dtype=self._dtype), (rows[keep], cols[keep])), shape=(w, F - r0))
            inc.sum_duplicates()
            inc.sort_indices()
            self.add_shard(s, inc)

    @property
    def support_(self) -> "CooccurrenceCounter | None":
        """Documents as the units of a second store (None without per-document counting): ``n_tokens_`` the
        documents counted, ``occ_F`` the documents each latent fires in, and the pair counts the documents each
        pair co-fires in (at one token at least): what the edge floor cooc.min_documents reads."""
        self._flush_support()
        return self._support

    def lookup(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Stored counts of pairs (i[k], j[k]), i < j (0 for pairs never stored), int64."""
        i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
        out = np.zeros(len(i), dtype=np.int64)
        shard_of = np.searchsorted(self.bounds_, i, side="right") - 1
        for s in np.unique(shard_of).tolist():
            run = self.shard(s)
            if run is None:
                continue
            k = np.flatnonzero(shard_of == s)
            r0 = int(self.bounds_[s])
            out[k] = np.asarray(run[i[k] - r0, j[k] - r0]).ravel()
        return out

    def reserve(self, n_tokens: int) -> None:
        """Widen the stored counts to int64 once a count could exceed 2^31 - 1 (``n_tokens`` tokens in all)."""
        if self._dtype == np.int32 and n_tokens > _INT32_MAX:
            self._dtype = np.int64
            self._runs = [[r.astype(np.int64) for r in runs] for runs in self._runs]

    def add_shard(self, s: int, run: sp.csr_matrix) -> None:
        """Add counts of row shard ``s`` (CSR, rows ``bounds_[s]..``, columns offset by ``bounds_[s]``), e.g.
        another process's; merged lazily, like the counter's own batches."""
        runs = self._runs[s]
        runs.append(run)
        while len(runs) >= 2 and runs[-2].nnz <= 2 * runs[-1].nnz:
            newer = runs.pop()
            older = runs.pop()
            runs.append(sp.csr_matrix(older + newer))

    def shard(self, s: int) -> sp.csr_matrix | None:
        """All counts of row shard ``s`` as one canonical CSR (rows ``bounds_[s]..``, columns offset by
        ``bounds_[s]``), or None when the shard holds no pair."""
        runs = self._runs[s]
        while len(runs) >= 2:
            newer = runs.pop()
            older = runs.pop()
            runs.append(sp.csr_matrix(older + newer))
        return runs[0] if runs else None

    def prune(self, below: int) -> "CooccurrenceCounter":
        """Drop stored pairs whose running count is < ``below`` (lossy; counts become lower bounds)."""
        for s in range(len(self._runs)):
            run = self.shard(s)
            if run is not None:
                before = run.nnz
                run = _prune(run, below)
                self.n_pruned_ += before - run.nnz
                self._runs[s] = [run] if run.nnz else []
        return self

    # ------------------------------------------------------------------------------ merging
    def merge(self, other: "CooccurrenceCounter") -> "CooccurrenceCounter":
        """Add another counter's counts into this one (exact: counts are sums over tokens)."""
        if not isinstance(other, CooccurrenceCounter):
            raise TypeError(f"cannot merge a {type(other).__name__} into a CooccurrenceCounter")
        same = (other.d_sae == self.d_sae and other.threshold == self.threshold
                and np.array_equal(other.bounds_, self.bounds_)
                and (other.theta_F is None) == (self.theta_F is None)
                and (self.theta_F is None or np.array_equal(other.theta_F, self.theta_F)))
        if not same:
            raise ConfigError("cooc", "cannot merge counters with different d_sae, thresholds or shards")
        if (other.docs_ is None) != (self.docs_ is None) and other.n_tokens_ and self.n_tokens_:
            raise ConfigError("cooc", "cannot merge a counter with document ids into one without")
        self._flush_support()
        other._flush_support()
        shared = self._done_docs & other._done_docs
        if shared:
            raise ConfigError("activations.documents", f"document {min(shared)} was counted by both counters; a "
                                                       "document's rows must all go to one counter (shard by document)")
        if other._support is not None:
            self.support_store().merge(other._support)
        self._done_docs |= other._done_docs
        self.spread_.merge(other.spread_)
        if other.docs_ is not None:
            if self.docs_ is None:
                self.docs_ = DocumentCounts(self.d_sae)
            self.docs_.merge(other.docs_)
        self.reserve(self.n_tokens_ + other.n_tokens_)
        for s, theirs in enumerate(other._runs):
            runs = sorted(self._runs[s] + [r.astype(self._dtype) for r in theirs], key=lambda r: -r.nnz)
            self._runs[s] = []
            for run in runs:
                self.add_shard(s, run)
        self.n_tokens_ += other.n_tokens_
        self.n_updates_ += other.n_updates_
        self.n_pruned_ += other.n_pruned_
        self.occ_F += other.occ_F
        return self

    def __add__(self, other: "CooccurrenceCounter") -> "CooccurrenceCounter":
        return copy.deepcopy(self).merge(other)

    # ------------------------------------------------------------------------------ results
    @property
    def n_pairs_(self) -> int:
        """Stored (distinct, i < j) pairs, counting duplicates across unmerged runs."""
        return sum(r.nnz for runs in self._runs for r in runs)

    @property
    def nbytes_(self) -> int:
        """Bytes held by the pair store."""
        return sum(r.data.nbytes + r.indices.nbytes + r.indptr.nbytes for runs in self._runs for r in runs)

    def upper_pairs(self) -> UpperPairs:
        """All stored pairs i < j with count >= 1, sorted by (i, j).

        Latent ids are int32 (int64 beyond 2^31 latents) and counts keep the store's dtype, so the
        export costs 12 bytes per pair on top of the store.
        """
        runs = [self.shard(s) for s in range(len(self._runs))]
        total = sum(r.nnz for r in runs if r is not None)
        id_dtype = np.int32 if self.d_sae <= _INT32_MAX else np.int64
        i = np.empty(total, dtype=id_dtype)
        j = np.empty(total, dtype=id_dtype)
        count = np.empty(total, dtype=self._dtype)
        pos = 0
        for s, run in enumerate(runs):
            if run is None:
                continue
            r0, n = int(self.bounds_[s]), run.nnz
            i[pos:pos + n] = np.repeat(np.arange(r0, r0 + run.shape[0], dtype=id_dtype), np.diff(run.indptr))
            np.add(run.indices, r0, out=j[pos:pos + n], casting="unsafe")
            count[pos:pos + n] = run.data
            pos += n
        return UpperPairs(i, j, count)

    @property
    def counts_(self) -> sp.csr_matrix:
        """Symmetric int64 CSR [d_sae, d_sae]: off-diagonal pair counts, diagonal = occurrences."""
        pairs = self.upper_pairs()
        return symmetric(pairs.i, pairs.j, pairs.count.astype(np.int64), self.occ_F, self.d_sae)


def symmetric(i: np.ndarray, j: np.ndarray, values: np.ndarray, diag_F: np.ndarray | None, d: int) -> sp.csr_matrix:
    """Symmetric CSR from upper-triangle entries (i < j) and an optional diagonal."""
    rows, cols, vals = [i, j], [j, i], [values, values]
    if diag_F is not None:
        nz = np.flatnonzero(diag_F)
        rows.append(nz)
        cols.append(nz)
        vals.append(np.asarray(diag_F)[nz].astype(values.dtype, copy=False))
    mat = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(d, d))
    mat.sum_duplicates()
    return mat
