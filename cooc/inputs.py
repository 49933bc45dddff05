"""Reading precomputed latent activations (``activations: {source: file, path: acts.npz}``).

The file is a scipy sparse CSR matrix [n_tokens, d_sae] of float activations written with
``scipy.sparse.save_npz``; every row is one counted token (drop masked BOS/PAD/EOS rows first).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator

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


def iter_chunks(acts_TF: sp.csr_matrix, chunk_tokens: int) -> Iterator[sp.csr_matrix]:
    """Consecutive row slices of at most ``chunk_tokens`` rows."""
    for start in range(0, acts_TF.shape[0], chunk_tokens):
        yield acts_TF[start:start + chunk_tokens]
