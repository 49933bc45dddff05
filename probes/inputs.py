"""Reading the co-occurrence stage's outputs (files only; no cooc internals).

``OUT/cooc/groups.csv``      one row per (latent, group): columns ``latent``, ``group_id`` (+ ``group_size``,
                             ``structure`` when present); group ids are read as strings; rows without one are ignored.
``OUT/cooc/occurrences.npy`` int64 firing count of every latent over the counted tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sources.errors import ConfigError

COOC_HINT = "run `python -m experiments.cooc` with the same config and --out first (or `python -m experiments.steer`)"


@dataclass
class CoocGroups:
    members: dict[str, tuple[int, ...]]
    """group id -> member latents (sorted)."""
    structure: dict[str, str]
    counts_F: np.ndarray
    """Firing count of every latent (occurrences.npy)."""
    n_tokens: int | None
    folder: Path

    @property
    def d_sae(self) -> int:
        return len(self.counts_F)

    def sizes(self) -> dict[str, int]:
        return {g: len(m) for g, m in self.members.items()}


def read_cooc(folder: str | Path) -> CoocGroups:
    """Groups and firing counts from a finished cooc stage folder; ConfigError naming the fix otherwise."""
    folder = Path(folder)
    gpath, opath = folder / "groups.csv", folder / "occurrences.npy"
    missing = [p.name for p in (gpath, opath) if not p.exists()]
    if missing:
        raise ConfigError("cooc", f"{folder} has no {' or '.join(missing)}: the co-occurrence stage has not run for this "
                          f"output folder; {COOC_HINT}")
    try:
        df = pd.read_csv(gpath, dtype={"group_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError("cooc", f"{gpath} is not a readable CSV ({type(exc).__name__}); {COOC_HINT}") from None
    need = {"latent", "group_id"}
    if not need <= set(df.columns):
        raise ConfigError("cooc", f"{gpath} lacks column(s) {sorted(need - set(df.columns))}; it was written by another "
                          f"version; {COOC_HINT}")
    try:
        counts = np.load(opath, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ConfigError("cooc", f"{opath} is not a numpy array file ({exc}); {COOC_HINT}") from None
    counts = np.asarray(counts).astype(np.int64).ravel()
    df = df[df["group_id"].notna()]
    df = df.assign(group_id=df["group_id"].astype(str).str.strip(), latent=pd.to_numeric(df["latent"], errors="coerce"))
    df = df[(df["group_id"] != "") & df["latent"].notna()]
    df = df.assign(latent=df["latent"].astype(np.int64))
    bad = df[(df["latent"] < 0) | (df["latent"] >= len(counts))]
    if len(bad):
        raise ConfigError("cooc", f"{gpath} names latent {int(bad['latent'].iloc[0])} but occurrences.npy has {len(counts)} "
                          f"latents; the files come from different runs; {COOC_HINT}")
    members = {str(g): tuple(sorted(set(int(x) for x in sub["latent"]))) for g, sub in df.groupby("group_id", sort=True)}
    structure = {}
    if "structure" in df.columns:
        structure = {str(g): str(sub["structure"].iloc[0]) for g, sub in df.groupby("group_id", sort=True)}
    n_tokens = None
    for mpath in (folder / "manifest.json", folder.parent / "manifest.json"):
        if mpath.exists():
            try:
                n_tokens = _find_n_tokens(json.loads(mpath.read_text()))
            except (json.JSONDecodeError, OSError):
                n_tokens = None
            if n_tokens is not None:
                break
    return CoocGroups(members, structure, counts, n_tokens, folder)


def _find_n_tokens(obj) -> int | None:
    if isinstance(obj, dict):
        if isinstance(obj.get("n_tokens"), (int, float)):
            return int(obj["n_tokens"])
        for v in obj.values():
            found = _find_n_tokens(v)
            if found is not None:
                return found
    return None
