"""Corpora: documents from a built-in package, text/JSONL files or a Hugging Face dataset,
tokenised into fixed-length contexts that never cross a document boundary.

Each context starts with BOS, holds up to ``context_len - 1`` tokens of one document, and is
right-padded; BOS, PAD and EOS positions are masked (``mask_L`` False) so no stage ever counts
or probes them. Keeping one document per context lets probes cross-validate grouped by document.

Sampling (:func:`iter_sampled_documents`): documents come in a seeded random order (``data.order``), each fills at
most ``data.max_doc_share`` of a stream's positions, and a seeded draw per document (:func:`heldout_documents`)
puts ``data.heldout_fraction`` of them in the held-out part: groups are found on the discovery part and replicated,
probed and intervened on the held-out part. A document's ``doc_index`` is its position in the corpus's own order,
whatever order it is read in, so every stage names the same document the same way.
"""

from __future__ import annotations

import glob
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from sources.config import DataSpec
from sources.builtin_corpus import BUILTIN_CORPORA, corpus_files
from sources.errors import ConfigError
from sources.fingerprint import folder_digest, tree_digest
from sources.hub import require_hub
from sources.sniff import check_utf8, regular_file


@dataclass(frozen=True)
class Context:
    index: int
    """Position of this context in the stream (0, 1, 2, ...)."""
    doc_index: int
    doc_id: str
    tokens_L: np.ndarray
    """int64 token ids, BOS first, PAD at the end."""
    mask_L: np.ndarray
    """True where the token is real document content (not BOS/PAD/EOS)."""
    spans_L2: np.ndarray
    """Character span of each token in the document text; -1 for BOS/PAD."""


def _expand(path: str, field: str = "data.path") -> list[Path]:
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith("."))
    elif any(ch in path for ch in "*?["):
        files = [Path(x) for x in sorted(glob.glob(str(p), recursive=True))]
    else:
        files = [p] if p.exists() else []
    if not files:
        raise ConfigError(field, f"{path} matches no file; give an existing file, directory or glob")
    for f in files:
        regular_file(f, field, "corpus file")  # a glob can match a folder; only regular files are documents
    return files


def check_corpus(spec: DataSpec) -> None:
    """Open every input of ``spec`` before any stage starts: text/JSONL files must be regular UTF-8 files,
    an ``hf_disk`` folder must exist, a Hub dataset needs a reachable Hub (ConfigError otherwise)."""
    if spec.source in ("text", "jsonl"):
        if not spec.path:
            raise ConfigError("data.path", f"data.source: {spec.source} needs data.path (file, directory or glob)")
        for f in _expand(spec.path):
            check_utf8(f, "data.path")
    elif spec.source == "hf_disk":
        _hf_disk_folder(spec)
    elif spec.source == "hub":
        require_hub("data.name", f"dataset {spec.name!r}", "use data.source: builtin, text, jsonl or hf_disk")


def iter_documents(spec: DataSpec) -> Iterator[tuple[str, str]]:
    """Yield ``(doc_id, text)`` in a deterministic order."""
    if spec.source == "builtin":
        if spec.name not in BUILTIN_CORPORA:
            raise ConfigError("data.name", f"unknown built-in corpus {spec.name!r}; available: {', '.join(BUILTIN_CORPORA)}")
        yield from BUILTIN_CORPORA[spec.name].documents()
    elif spec.source in ("text", "jsonl"):
        if not spec.path:
            raise ConfigError("data.path", f"data.source: {spec.source} needs data.path (file, directory or glob)")
        for f in _expand(spec.path):
            if spec.source == "text":
                yield f.name, _read_text(f)
            else:
                yield from _iter_jsonl(f, spec.text_field)
    elif spec.source in ("hf_disk", "hub"):
        yield from _iter_hf(spec)
    else:  # pragma: no cover - pydantic restricts the values
        raise ConfigError("data.source", f"unknown source {spec.source!r}")


def heldout_documents(doc_ids, seed: int, fraction: float) -> np.ndarray:
    """Whether each document (by its int id: a corpus's ``doc_index``, or an activation file's document id) is in
    the held-out part: a seeded draw per document, independent of the order documents are read in and of every
    other document, so a stream, the probes and a file split the same documents the same way."""
    ids = np.asarray(doc_ids, dtype=np.int64).reshape(-1)
    if fraction <= 0:
        return np.zeros(ids.shape, dtype=bool)
    u = np.fromiter((int.from_bytes(hashlib.blake2b(f"{seed}:{d}".encode(), digest_size=8).digest(), "little")
                     for d in ids.tolist()), dtype=np.uint64, count=len(ids))
    return u < np.uint64(min(fraction, 1.0) * 2.0 ** 64 - 1)


def _shuffled(items: Iterator, rng: np.random.Generator, buffer: int) -> Iterator:
    """A seeded random order of ``items`` through a buffer of ``buffer`` items (an exact uniform shuffle when there
    are no more items than that)."""
    pool: list = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        k = int(rng.integers(len(pool)))
        yield pool[k]
        pool[k] = item
    for k in rng.permutation(len(pool)).tolist():
        yield pool[k]


def iter_sampled_documents(spec: DataSpec) -> Iterator[tuple[int, str, str]]:
    """``(doc_index, doc_id, text)`` of the documents a stream of ``spec`` reads, in its order (module doc):
    ``doc_index`` is the document's position in the corpus order; documents outside ``spec.part`` and those
    ``holdout_every`` holds out (the SAE evaluation split) are skipped."""
    def wanted():
        for doc_index, (doc_id, text) in enumerate(iter_documents(spec)):
            if spec.holdout_every:
                held_out = doc_index % spec.holdout_every == spec.holdout_every - 1
                if held_out != spec.holdout_only:
                    continue
            if spec.part != "all":
                heldout = bool(heldout_documents([doc_index], spec.seed, spec.heldout_fraction)[0])
                if heldout != (spec.part == "heldout"):
                    continue
            yield doc_index, doc_id, text

    if spec.order == "corpus":
        yield from wanted()
    else:
        yield from _shuffled(wanted(), np.random.default_rng([spec.seed, 0x5EED]), spec.shuffle_buffer)


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError("data.path", f"{f} is not UTF-8 text") from None


def _iter_jsonl(f: Path, text_field: str) -> Iterator[tuple[str, str]]:
    try:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError("data.path", f"{f}:{lineno} is not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict) or text_field not in obj:
                    raise ConfigError("data.text_field", f"{f}:{lineno} has no field {text_field!r}; set data.text_field to the text's key")
                yield str(obj.get("id", f"{f.name}:{lineno}")), str(obj[text_field])
    except UnicodeDecodeError:  # raised by reading the file (a consumer's own errors never enter here)
        raise ConfigError("data.path", f"{f} is not UTF-8 text; convert it to UTF-8") from None


def _hf_disk_folder(spec: DataSpec) -> Path:
    """The folder of a ``data.source: hf_disk`` dataset (ConfigError when it is not a folder)."""
    if not spec.path or not Path(spec.path).expanduser().is_dir():
        raise ConfigError("data.path", f"data.source: hf_disk needs data.path of a dataset folder saved with "
                                       f"save_to_disk (got {spec.path!r})")
    return Path(spec.path).expanduser()


def _iter_hf(spec: DataSpec) -> Iterator[tuple[str, str]]:
    import datasets

    if spec.source == "hf_disk":
        folder = _hf_disk_folder(spec)
        try:
            ds = datasets.load_from_disk(str(folder))
        except Exception as exc:  # noqa: BLE001 - a folder that is not a saved dataset
            raise ConfigError("data.path", f"{spec.path} is not a dataset saved with save_to_disk "
                                           f"({type(exc).__name__})") from None
        if isinstance(ds, datasets.DatasetDict):
            if spec.split not in ds:
                raise ConfigError("data.split", f"split {spec.split!r} not in dataset; available: {', '.join(ds)}")
            ds = ds[spec.split]
    else:
        require_hub("data.name", f"dataset {spec.name!r}", "use data.source: builtin, text, jsonl or hf_disk")
        try:
            ds = datasets.load_dataset(spec.name, split=spec.split, streaming=True)
        except Exception as exc:  # network, missing dataset, bad split: all user-facing
            raise ConfigError("data.name", f"could not load Hub dataset {spec.name!r} split {spec.split!r} ({type(exc).__name__}); "
                              "the Hub must be reachable, or use data.source: builtin/text/jsonl/hf_disk") from None
    for i, row in enumerate(ds):
        if spec.text_field not in row:
            raise ConfigError("data.text_field", f"dataset rows have no field {spec.text_field!r}; available: {', '.join(row)}")
        yield str(row.get("id", i)), str(row[spec.text_field])


def special_ids(tokenizer) -> tuple[int, int, set[int]]:
    """(bos_id, pad_id, ids to mask). Models without a BOS token start contexts with EOS, as GPT-2 does."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    masked = {i for i in (bos, pad, tokenizer.eos_token_id) if i is not None}
    return bos, pad, masked


def pad_batch(tokens: list[np.ndarray], masks: list[np.ndarray], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Token windows of different lengths as one batch: ``tokens_BL`` (int64, right-padded with ``pad``) and
    ``mask_BL`` (each window's content mask, False on the padding)."""
    L = max(len(t) for t in tokens)
    tokens_BL = np.full((len(tokens), L), pad, dtype=np.int64)
    mask_BL = np.zeros((len(tokens), L), dtype=bool)
    for i, (t, m) in enumerate(zip(tokens, masks)):
        tokens_BL[i, :len(t)] = t
        mask_BL[i, :len(m)] = m
    return tokens_BL, mask_BL


def iter_contexts(spec: DataSpec, tokenizer, min_tokens: int = 8,
                  shard: tuple[int, int] | None = None) -> Iterator[Context]:
    """Tokenise documents into contexts of ``spec.context_len`` until ``spec.max_tokens`` positions.

    A document's trailing piece shorter than ``min_tokens`` content tokens is dropped (unless it is the
    whole document). Documents come from :func:`iter_sampled_documents` (its order, part and split), and no
    document gives more than ``max(1, floor(spec.max_doc_share * spec.max_tokens / context_len))`` contexts.

    ``shard=(rank, world_size)`` yields only the contexts of the documents whose ordinal ``k`` in the stream
    (0, 1, 2, ... over the documents that give contexts) has ``k % world_size == rank`` (context indices and the
    ``max_tokens`` budget stay those of the whole stream), so the ranks of a distributed run see disjoint shards
    whose union is exactly the single-process stream, and every document lies whole in one shard (what the
    per-document counts of cooc need).
    """
    rank, world = shard if shard is not None else (0, 1)
    if not 0 <= rank < world:
        raise ValueError(f"shard rank {rank} is outside 0..{world - 1}")
    bos, pad, masked = special_ids(tokenizer)
    body = spec.context_len - 1
    emitted = 0
    index = 0
    per_doc = max(1, int(spec.max_doc_share * spec.max_tokens) // spec.context_len)
    doc_k = -1
    for doc_index, doc_id, text in iter_sampled_documents(spec):
        if not text.strip():
            continue
        doc_k += 1
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], dtype=np.int64)
        spans = np.asarray(enc["offset_mapping"], dtype=np.int32).reshape(-1, 2)
        for start in range(0, min(len(ids), per_doc * body), body):
            piece = ids[start:start + body]
            if len(piece) < min_tokens and start > 0:
                break
            tokens = np.full(spec.context_len, pad, dtype=np.int64)
            tokens[0] = bos
            tokens[1:1 + len(piece)] = piece
            mask = np.zeros(spec.context_len, dtype=bool)
            mask[1:1 + len(piece)] = ~np.isin(piece, list(masked))
            sp = np.full((spec.context_len, 2), -1, dtype=np.int32)
            sp[1:1 + len(piece)] = spans[start:start + body]
            if doc_k % world == rank:
                yield Context(index, doc_index, doc_id, tokens, mask, sp)
            index += 1
            emitted += spec.context_len
            if emitted >= spec.max_tokens:
                return
    if index == 0 and spec.part != "all":
        raise ConfigError("data", f"the {spec.part} part of the corpus yielded no tokens (data.heldout_fraction: "
                                  f"{spec.heldout_fraction} of the documents are held out, and this corpus has too few "
                                  "documents for both parts); give more documents or set data.heldout_fraction: 0")
    if index == 0:
        raise ConfigError("data", "the corpus yielded no tokens; check data.path / data.name and that documents are not empty")


def data_fingerprint(spec: DataSpec) -> dict:
    """Content identity of ``data:``: the digest of the corpus's source files (a Hub dataset: {})."""
    if spec.source == "builtin":
        return {"builtin": spec.name, "sha": tree_digest(corpus_files(spec.name))}
    if spec.source in ("text", "jsonl") and spec.path:
        return {"files": tree_digest(_expand(spec.path))}
    if spec.source == "hf_disk" and spec.path and Path(spec.path).expanduser().is_dir():
        return {"hf_disk": folder_digest(spec.path)}
    return {}  # a Hub dataset: identified by the data: section itself (name, split)
