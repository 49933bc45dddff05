"""Corpus documents as the probe tasks see them: read as a stream reads them, tokenised once with character offsets."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterator

import numpy as np

from sources.config import DataSpec
from sources.corpora import iter_sampled_documents


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
    """``(doc_index, doc_id, text)`` of the documents a stream of ``spec`` reads (its order, part and split:
    sources.corpora.iter_sampled_documents), at most ``max_documents`` of them."""
    return islice(iter_sampled_documents(spec), max_documents)


def tokenize(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[L]`` of ``text`` (no special tokens) and their character spans ``[L, 2]``."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    spans = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return ids, spans
