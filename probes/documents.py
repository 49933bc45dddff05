"""Corpus documents as the probe tasks see them: read in corpus order, tokenised once with character offsets."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import numpy as np

from sources.config import DataSpec
from sources.corpora import iter_documents


@dataclass
class Doc:
    """A chosen document and its task tokens."""

    doc_index: int
    doc_id: str
    text: str
    ids: np.ndarray
    spans: np.ndarray
    rows: list[dict]
    """Task tokens: dicts with token_index and the task's fields."""
    ignore: set[int]
    """Token positions that are task-like but not chosen (neither task nor 'other' for enrichment)."""


def iter_probe_documents(spec: DataSpec, max_documents: int | None = None) -> Iterator[tuple[int, str, str]]:
    """``(doc_index, doc_id, text)`` in corpus order, skipping held-out documents as ``iter_contexts`` does."""
    docs = enumerate(iter_documents(spec))
    if max_documents is not None:
        docs = islice(docs, max_documents)
    for doc_index, (doc_id, text) in docs:
        if spec.holdout_every:
            held_out = doc_index % spec.holdout_every == spec.holdout_every - 1
            if held_out != spec.holdout_only:
                continue
        yield doc_index, doc_id, text


def tokenize(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[L]`` of ``text`` (no special tokens) and their character spans ``[L, 2]``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    spans = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return ids, spans
