"""Co-occurrence counting on several processes: ``torchrun --nproc-per-node N -m experiments.cooc CONFIG.yaml``.

Every rank counts a disjoint shard of the input into its own :class:`~cooc.counting.CooccurrenceCounter`
(the stream: the documents with ordinal ``% world_size == rank``; a file: a contiguous range of rows, cut
between documents), then
:func:`reduce_counter` adds the partial counts into rank 0's counter with ``torch.distributed``
(gloo on CPU, NCCL on GPU). Counts are sums over tokens, so the reduced counter is *identical* to the
one a single process would build (same pairs, counts, occurrences and tokens). Only rank 0 scores,
finds groups and writes OUT/cooc/; the other ranks return after the reduction.

Reduction: rank 0 receives the other ranks one after another, one row shard of the pair store at a
time (header ``[nnz, n_rows]`` then ``indptr``, ``indices``, ``data``), and pushes each shard into its
own store (the same log-structured merge that counting uses). Rank 0 therefore holds its own store plus
one shard of one other rank at a time; no rank ever materialises everybody's pairs at once.
Not identical with ``cooc.prune_below > 0`` (pruning runs on each rank's partial counts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cooc.counting import CooccurrenceCounter
from sources.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """The process group this process belongs to."""

    rank: int
    world_size: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world_size


def env_world() -> tuple[int, int]:
    """(rank, world_size) from the variables torchrun sets; (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_from_env(backend: str | None = None) -> Dist | None:
    """Join the process group torchrun describes (None for a single process).

    ``backend``: default NCCL when CUDA is available (each rank on GPU ``LOCAL_RANK``), gloo otherwise.
    """
    import torch
    import torch.distributed as dist

    _, world = env_world()
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), str(dist.get_backend()))


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def row_range(n_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, disjoint row range of ``rank``; the ranges cover 0..n_rows in order."""
    return n_rows * rank // world_size, n_rows * (rank + 1) // world_size


def document_row_range(n_rows: int, docs_T: np.ndarray | None, rank: int, world_size: int) -> tuple[int, int]:
    """:func:`row_range` with each boundary moved forward to the next change of document (rows sorted by document,
    ``docs_T``), so no document is split between two ranks; the plain range without document ids."""
    start, stop = row_range(n_rows, rank, world_size)
    if docs_T is None:
        return start, stop

    def align(b: int) -> int:
        if b <= 0 or b >= n_rows:
            return min(max(b, 0), n_rows)
        while b < n_rows and docs_T[b] == docs_T[b - 1]:
            b += 1
        return b
    return align(start), align(stop)


def broadcast(obj, d: Dist):
    """Rank 0's ``obj`` on every rank (small picklable objects)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj, d: Dist) -> list:
    """Every rank's ``obj``, in rank order (small picklable objects)."""
    import torch.distributed as dist

    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def raise_if_any_failed(error: ConfigError | None, d: Dist) -> None:
    """Collective: every rank raises the first rank's ConfigError if any rank had one (no rank is left
    waiting in a later collective)."""
    errors = all_gather(None if error is None else (error.field, error.message), d)
    for e in errors:
        if e is not None:
            raise ConfigError(*e)


def _device(d: Dist):
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if d.backend == "nccl" else torch.device("cpu")


def _send(array: np.ndarray, dst: int, d: Dist) -> None:
    import torch
    import torch.distributed as dist

    if array.size:
        dist.send(torch.from_numpy(np.ascontiguousarray(array)).to(_device(d)), dst)


def _recv(n: int, dtype, src: int, d: Dist) -> np.ndarray:
    import torch
    import torch.distributed as dist

    if n == 0:
        return np.zeros(0, dtype=dtype)
    buf = torch.empty(n, dtype=getattr(torch, np.dtype(dtype).name), device=_device(d))
    dist.recv(buf, src)
    return buf.cpu().numpy()


def reduce_counter(counter: CooccurrenceCounter, d: Dist) -> CooccurrenceCounter | None:
    """Add every rank's counts into rank 0's ``counter``; returns it on rank 0, None elsewhere.

    Collective: every rank must call it with a counter of the same width, thresholds and shards
    (an empty counter where a rank's shard had no tokens).
    """
    counter._flush_support()
    with_support = any(all_gather(counter._support is not None, d))
    reduced = _reduce_store(counter, d)
    if with_support:  # the documents-as-units store (counter.support_), reduced the same way
        support = _reduce_store(counter.support_store(), d)
        if reduced is not None:
            reduced._support = support
    return reduced


def _reduce_store(counter: CooccurrenceCounter, d: Dist) -> CooccurrenceCounter | None:
    import torch
    import torch.distributed as dist

    meta = {"d_sae": counter.d_sae, "threshold": counter.threshold, "bounds": counter.bounds_.tolist(),
            "theta": None if counter.theta_F is None else counter.theta_F.tobytes(),
            "n_tokens": int(counter.n_tokens_), "n_updates": int(counter.n_updates_),
            "n_pruned": int(counter.n_pruned_),
            "spread": counter.spread_, "docs": counter.docs_,
            "done_docs": counter._done_docs}  # small next to the pair store
    metas = all_gather(meta, d)
    same = ("d_sae", "threshold", "bounds", "theta")
    if any(m[k] != metas[0][k] for m in metas for k in same):
        raise ConfigError("cooc", "ranks built counters with different d_sae, thresholds or shards; "
                                  "every rank must run the same config")
    occ = torch.from_numpy(counter.occ_F.astype(np.int64)).to(_device(d))
    dist.reduce(occ, dst=0)
    n_shards = len(counter.bounds_) - 1
    if d.is_main:
        counter.reserve(sum(m["n_tokens"] for m in metas))  # int64 counts once any could exceed 2^31 - 1
        for src in range(1, d.world_size):
            for s in range(n_shards):
                nnz, n_rows = (int(x) for x in _recv(2, np.int64, src, d))
                if nnz == 0:
                    continue
                indptr = _recv(n_rows + 1, np.int64, src, d)
                indices = _recv(nnz, np.int32, src, d)
                data = _recv(nnz, np.int64, src, d).astype(counter._dtype)
                run = sp.csr_matrix((data, indices, indptr), shape=(n_rows, counter.d_sae - int(counter.bounds_[s])))
                counter.add_shard(s, run)
        counter.occ_F = occ.cpu().numpy().astype(np.int64)
        counter.n_tokens_ = sum(m["n_tokens"] for m in metas)
        counter.n_updates_ = sum(m["n_updates"] for m in metas)
        counter.n_pruned_ = sum(m["n_pruned"] for m in metas)
        for m in metas[1:]:
            counter._done_docs |= m["done_docs"]
            counter.spread_.merge(m["spread"])
            if m["docs"] is not None:
                if counter.docs_ is None:
                    from cooc.documents import DocumentCounts

                    counter.docs_ = DocumentCounts(counter.d_sae)
                counter.docs_.merge(m["docs"])
        return counter
    for s in range(n_shards):
        run = counter.shard(s)
        nnz = 0 if run is None else int(run.nnz)
        n_rows = int(counter.bounds_[s + 1] - counter.bounds_[s])
        _send(np.array([nnz, n_rows], dtype=np.int64), 0, d)
        if nnz:
            _send(run.indptr.astype(np.int64), 0, d)
            _send(run.indices.astype(np.int32), 0, d)
            _send(run.data.astype(np.int64), 0, d)
        counter._runs[s] = []  # sent: free this rank's copy as we go
    return None
