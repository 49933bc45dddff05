"""Reading precomputed latent activations (``activations: {source: file, path: acts.npz}``).

The file is a scipy sparse CSR matrix [n_tokens, d_sae] of float activations written with
``scipy.sparse.save_npz``; every row is one counted token (drop masked BOS/PAD/EOS rows first).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from cooc.counting import check_csr
from sources.errors import ConfigError

FIELD = "activations.path"
HOW = "save one with scipy.sparse.save_npz(path, scipy.sparse.csr_matrix(acts))"


def load_activations(path: str | Path, d_sae: int | None = None) -> sp.csr_matrix:
    """Load and validate a CSR activation file; ConfigError names what is wrong and how to fix it."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(FIELD, f"file {path} does not exist; {HOW}")
    if path.is_dir():
        raise ConfigError(FIELD, f"{path} is a directory; give a .npz file ({HOW})")
    try:
        obj = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(FIELD, f"{path} is not a numpy/scipy file ({type(exc).__name__}); {HOW}") from None
    if isinstance(obj, np.ndarray):
        raise ConfigError(FIELD, f"{path} holds a dense array of shape {obj.shape}, not a sparse matrix; {HOW}")
    with obj:
        names = sorted(obj.files)
    if "format" not in names:
        raise ConfigError(FIELD, f"{path} holds arrays {names[:5]} but no scipy sparse matrix; {HOW}")
    try:
        acts = sp.load_npz(path)
    except (ValueError, OSError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise ConfigError(FIELD, f"{path} is not a readable scipy sparse .npz ({exc}); {HOW}") from None
    if acts.format != "csr":
        raise ConfigError(FIELD, f"{path} holds a {acts.format.upper()} matrix, expected CSR; "
                                 f"convert it with .tocsr() before save_npz")
    return check_csr(acts, d_sae, field=FIELD)


def load_documents(path: str | Path, n_rows: int) -> np.ndarray:
    """The int64 document id of every row of an activation file; ConfigError (``activations.documents``) naming
    what is wrong otherwise."""
    field, how = "activations.documents", "save one with numpy.save(path, doc_ids.astype(numpy.int64)), one id per row"
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"file {path} does not exist; {how}")
    try:
        docs = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(field, f"{path} is not a .npy array ({type(exc).__name__}); {how}") from None
    if not isinstance(docs, np.ndarray) or docs.ndim != 1:
        raise ConfigError(field, f"{path} must hold a 1-d array of document ids; {how}")
    if not np.issubdtype(docs.dtype, np.integer):
        raise ConfigError(field, f"{path} holds {docs.dtype} values, not integers; {how}")
    if docs.shape[0] != n_rows:
        raise ConfigError(field, f"{path} has {docs.shape[0]} document ids but the activation file has {n_rows} rows; {how}")
    return docs.astype(np.int64)


def split_rows(acts_TF: sp.csr_matrix, docs_T: np.ndarray | None, seed: int, heldout_fraction: float):
    """``((acts, docs) of the discovery documents, (acts, docs) of the held-out ones or None)``, each with its rows
    sorted by document id (stably: a document's rows keep their order), as the per-document counts need them
    contiguous. Without document ids there is no split: every row is discovery. The split is the corpus's
    (sources.corpora.heldout_documents on the ids)."""
    if docs_T is None:
        return (acts_TF, None), None
    from sources.corpora import heldout_documents

    uniq, inv = np.unique(docs_T, return_inverse=True)
    held_T = heldout_documents(uniq, seed, heldout_fraction)[inv]

    def part(keep):
        rows = np.flatnonzero(keep)
        rows = rows[np.argsort(docs_T[rows], kind="stable")]
        return acts_TF[rows], docs_T[rows]
    return part(~held_T), (part(held_T) if held_T.any() else None)


@dataclass
class FileChunk:
    """Rows of an activation file and their documents (the ``.latents`` / ``.doc_index_N`` a stream batch has)."""

    latents: sp.csr_matrix
    doc_index_N: np.ndarray | None = None


def iter_chunks(acts_TF: sp.csr_matrix, chunk_tokens: int, docs_T: np.ndarray | None = None):
    """Consecutive row slices of at most ``chunk_tokens`` rows (with their document ids: :class:`FileChunk`)."""
    for start in range(0, acts_TF.shape[0], chunk_tokens):
        part = acts_TF[start:start + chunk_tokens]
        yield part if docs_T is None else FileChunk(part, docs_T[start:start + chunk_tokens])
