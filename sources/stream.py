"""The activation stream: contexts -> model forward truncated at the hook -> activations (and SAE latents).

The forward pass stops right after the hooked module (nnsight ``tracer.stop()``), so no layer past
the hook is computed. With ``stream.cache: true`` every batch is written to an on-disk cache keyed by
a content hash of (model weights, hook, corpus spec and corpus files, batch size); a later run reuses
finished batches and an interrupted run resumes after the last finished one. Each cached batch carries
the SHA-256 of its activations and its shape; a batch file that is truncated, unreadable or does not
match them is recomputed and rewritten, never used. Non-finite activations (NaN/inf) stop the stream
with a ConfigError naming the layer, context, document and position.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from sources.config import DataSpec, HookSpec, StreamSpec
from sources.corpora import Context, data_fingerprint, iter_contexts
from sources.errors import ConfigError
from sources.files import atomic_path, cache_root, stable_hash, write_json
from sources.models import LoadedModel
from sources.patching import read_sites
from sources.progress import progress_bar
from sources.sae_view import as_view

log = logging.getLogger(__name__)


@dataclass
class ActivationBatch:
    acts_BLD: torch.Tensor
    """Activations at the hook, in the model's dtype, on the model's device."""
    mask_BL: torch.Tensor
    """True where the position is document content (BOS/PAD/EOS are False)."""
    tokens_BL: torch.Tensor
    contexts: list[Context]

    @property
    def n_tokens(self) -> int:
        return int(self.mask_BL.sum())

    def masked_acts_ND(self) -> torch.Tensor:
        return self.acts_BLD[self.mask_BL.to(self.acts_BLD.device)]


@dataclass
class LatentBatch:
    latents: sp.csr_matrix
    """SAE latent activations of the unmasked positions, float32 [n_tokens, d_sae]."""
    context_index_N: np.ndarray
    position_N: np.ndarray
    doc_index_N: np.ndarray | None = None
    """The corpus document of every row (the document-stratified null's strata)."""

    @property
    def n_tokens(self) -> int:
        return self.latents.shape[0]


def batched(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(islice(it, n)):
        yield chunk


def hook_activations(model: LoadedModel, tokens_BL: torch.Tensor, hook: HookSpec) -> torch.Tensor:
    """Run the model on ``tokens_BL`` up to the hook and return the activations there [B, L, D]."""
    return read_sites(model, tokens_BL, [hook], logits=False).acts[0]


def cache_dir_for(model: LoadedModel, hook: HookSpec, data: DataSpec, stream: StreamSpec,
                  shard: tuple[int, int] | None = None) -> Path:
    spec = {"model": model.identity, "hook": hook.model_dump(), "data": data.model_dump(),
            "corpus": data_fingerprint(data), "batch_size": stream.batch_size, "version": 2}
    if shard is not None and shard[1] > 1:
        spec["shard"] = list(shard)  # a rank's batches hold other contexts than the whole stream's
    return cache_root() / "activations" / stable_hash(spec)


def iter_activation_batches(model: LoadedModel, data: DataSpec, hook: HookSpec, stream: StreamSpec,
                            progress: bool = True, shard: tuple[int, int] | None = None) -> Iterator[ActivationBatch]:
    """Stream activations batch by batch, through the on-disk cache when ``stream.cache`` is set.

    ``shard=(rank, world_size)``: only the documents with ordinal ``% world_size == rank`` (a distributed run;
    sources.corpora.iter_contexts).
    """
    cache = cache_dir_for(model, hook, data, stream, shard) if stream.cache else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        write_json(cache / "spec.json", {"model": model.identity, "hook": hook.model_dump(), "data": data.model_dump()})
    world = shard[1] if shard is not None else 1
    reused, b = 0, -1
    bar = progress_bar(total=-(-data.max_tokens // world), unit="tok", desc=f"stream L{hook.layer}.{hook.site}",
                       progress=progress and stream.progress, mininterval=2.0)
    for b, contexts in enumerate(batched(iter_contexts(data, model.tokenizer, shard=shard), stream.batch_size)):
        tokens_BL = torch.from_numpy(np.stack([c.tokens_L for c in contexts]))
        mask_BL = torch.from_numpy(np.stack([c.mask_L for c in contexts]))
        path = cache / f"batch_{b:06d}.pt" if cache is not None else None
        shape = (len(contexts), data.context_len, model.d_model)
        acts = _load_cached(path, shape, model.device) if path is not None and path.exists() else None
        if acts is None:
            acts = hook_activations(model, tokens_BL, hook)
            check_finite(acts, mask_BL, contexts, hook)
            if path is not None:
                with atomic_path(path, "stream.cache") as tmp:
                    cpu = acts.cpu()
                    torch.save({"acts": cpu, "sha256": _digest(cpu), "shape": list(cpu.shape)}, tmp)
        else:
            reused += 1
        bar.update(tokens_BL.numel())
        yield ActivationBatch(acts, mask_BL, tokens_BL, contexts)
    bar.close()
    if cache is not None:
        log.info("stream: %d of %d batches read from the activation cache %s", reused, b + 1, cache)


def _digest(acts: torch.Tensor) -> str:
    return hashlib.sha256(acts.contiguous().view(torch.uint8).numpy()).hexdigest()


def _load_cached(path: Path, shape: tuple, device) -> torch.Tensor | None:
    """A cached batch if it is readable and matches its recorded digest and the expected shape, else None."""
    try:
        obj = torch.load(path, map_location="cpu")
        acts = obj["acts"]
        ok = tuple(acts.shape) == shape and list(obj.get("shape", [])) == list(shape) and obj.get("sha256") == _digest(acts)
    except Exception as exc:  # truncated, corrupted or foreign file: recompute it
        log.warning("stream: cached batch %s is unreadable (%s); recomputing it", path, type(exc).__name__)
        return None
    if not ok:
        log.warning("stream: cached batch %s does not match its content hash or shape; recomputing it", path)
        return None
    return acts.to(device)


def check_finite(acts_BLD: torch.Tensor, mask_BL: torch.Tensor, contexts: list[Context], hook: HookSpec) -> None:
    """ConfigError naming the first document position whose activations are NaN or infinite."""
    bad_BL = ~torch.isfinite(acts_BLD).all(-1).cpu() & mask_BL
    if bool(bad_BL.any()):
        b, pos = (int(x) for x in bad_BL.nonzero()[0])
        ctx = contexts[b]
        raise ConfigError("model", f"activations at layer {hook.layer} ({hook.site}) are NaN or infinite at "
                                   f"{int(bad_BL.sum())} document position(s), first in context {ctx.index} "
                                   f"(document {ctx.doc_id!r}), position {pos}; the model's weights or dtype "
                                   f"overflow there (try model.dtype: float32, or check the weights)")


def iter_latents(model: LoadedModel, sae, data: DataSpec, hook: HookSpec, stream: StreamSpec,
                 progress: bool = True, shard: tuple[int, int] | None = None) -> Iterator[LatentBatch]:
    """SAE latents of every unmasked position, as sparse batches (``shard``: see iter_activation_batches)."""
    view = as_view(sae)
    for batch in iter_activation_batches(model, data, hook, stream, progress, shard):
        mask = batch.mask_BL
        b_idx, pos = mask.nonzero(as_tuple=True)
        rows = b_idx.numpy()
        ctx_index = np.array([c.index for c in batch.contexts])[rows]
        doc_index = np.array([c.doc_index for c in batch.contexts], dtype=np.int64)[rows]
        yield LatentBatch(view.encode_sparse(batch.masked_acts_ND()), ctx_index, pos.numpy(), doc_index)
