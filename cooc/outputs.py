"""Files written under ``OUT/cooc/`` (every one atomically; columns documented in docs/cooc.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cooc.counting import UpperPairs, symmetric
from sources.files import atomic_path, write_json

FILES = ("occurrences.npy", "counts.npz", "jaccard.npz", "pairs.parquet", "groups.csv", "manifest.json")


def jaccard_matrix(pairs: UpperPairs, occ_F: np.ndarray) -> sp.csr_matrix:
    """Symmetric float64 CSR of Jaccard indices of all stored pairs (empty diagonal)."""
    c = pairs.count.astype(np.float64)
    jac = c / (occ_F[pairs.i] + occ_F[pairs.j] - c)
    return symmetric(pairs.i, pairs.j, jac, None, occ_F.shape[0])


def write_outputs(out_dir: str | Path, occ_F: np.ndarray, pairs: UpperPairs, scored: pd.DataFrame | None,
                  groups: pd.DataFrame, manifest: dict) -> dict[str, str]:
    """Write the stage's files; ``scored`` None skips pairs.parquet. Returns {name: path}.

    manifest.json is written last, so its presence means the other files are complete.
    """
    out = Path(out_dir)
    paths = {}
    d = occ_F.shape[0]
    with atomic_path(out / "occurrences.npy") as tmp:
        np.save(tmp, occ_F.astype(np.int64))
    with atomic_path(out / "counts.npz") as tmp:
        sp.save_npz(tmp, symmetric(pairs.i, pairs.j, pairs.count.astype(np.int64), occ_F, d), compressed=False)
    with atomic_path(out / "jaccard.npz") as tmp:
        sp.save_npz(tmp, jaccard_matrix(pairs, occ_F), compressed=False)
    if scored is not None:
        with atomic_path(out / "pairs.parquet") as tmp:
            scored.to_parquet(tmp, index=False)
    elif (out / "pairs.parquet").exists():
        (out / "pairs.parquet").unlink()  # stale file of an earlier run
    with atomic_path(out / "groups.csv") as tmp:
        groups.to_csv(tmp, index=False)
    write_json(out / "manifest.json", manifest)
    for name in FILES:
        if (out / name).exists():
            paths[name] = str(out / name)
    return paths
