"""The co-occurrence stage's result: :class:`CoocResult`, its files under ``OUT/cooc/`` and the one reader of them.

Files (columns documented in docs/cooc.md; each written atomically, ``manifest.json`` last, so its presence means
the others are complete):

``occurrences.npy``  int64 firing count of every latent over the counted tokens
``counts.npz``       symmetric int64 CSR of pair counts, the occurrences on the diagonal
``jaccard.npz``      symmetric float64 CSR of the Jaccard index of every stored pair
``pairs.parquet``    the scored pairs (as many as ``cooc.write_pairs`` says; absent with ``none``)
``groups.csv``       one row per (latent, group): id, size, structure label and metrics
``manifest.json``    what was counted and how, with ``format_version`` (:data:`FORMAT_VERSION`)

Every later stage and the report read these files through :meth:`CoocResult.load`, never by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from cooc.counting import symmetric
from cooc.groups import Group
from cooc.structure import Structure
from sources.errors import ConfigError
from sources.files import SavedResult, atomic_path, read_csv, read_versioned, write_json

FORMAT_VERSION = 1
"""Version of the files' layout; :meth:`CoocResult.load` refuses another (a stage key includes it, so a rerun
recomputes a folder of another version instead of reusing it)."""
FILES = ("occurrences.npy", "counts.npz", "jaccard.npz", "pairs.parquet", "groups.csv", "manifest.json")
HINT = "run `python -m experiments.cooc` with the same config and --out first (or `python -m experiments.steer`)"
STRUCTURE_COLUMNS = ("n_edges", "density", "degree_centralisation", "clustering", "diameter")


@dataclass
class CoocResult(SavedResult):
    """What one co-occurrence run produced: firing counts, groups, the scored pairs and the pair counts.

    ``pairs`` and ``counts_FF`` can be large; :meth:`load` reads them only when asked.
    """

    RECORD = "manifest.json"

    occ_F: np.ndarray
    """Firing count of every latent over the counted tokens."""
    groups_table: pd.DataFrame
    """groups.csv: one row per (latent, group) with columns latent, group_id (str) and, from the stage,
    group_size, structure and the structure metrics (cooc.groups.GROUP_COLUMNS)."""
    manifest: dict = field(default_factory=dict, repr=False)
    """What was counted and how (n_tokens, firing rule, family size, method, config, versions, ...)."""
    pairs: pd.DataFrame | None = field(default=None, repr=False)
    """Scored tested pairs with an ``edge`` column (cooc.scoring; as many rows as cooc.write_pairs says), or
    None (not written, or not loaded)."""
    counts_FF: sp.csr_matrix | None = field(default=None, repr=False)
    """Symmetric pair counts with the occurrences on the diagonal, or None (not loaded; see :meth:`pair_counts`)."""
    folder: Path | None = None
    """Where it was loaded from (named in error messages)."""
    counter: Any = field(default=None, repr=False, compare=False)
    """The in-memory :class:`cooc.counting.CooccurrenceCounter` of a run (not saved; None after :meth:`load`)."""

    def pair_counts(self) -> sp.csr_matrix | None:
        """The symmetric pair counts: loaded, or built once from the run's counter (12 bytes per pair to export,
        about 32 more for the matrix, so only on demand), or None."""
        if self.counts_FF is None and self.counter is not None:
            p = self.counter.upper_pairs()
            self.counts_FF = symmetric(p.i, p.j, p.count.astype(np.int64), self.counter.occ_F, self.counter.d_sae)
        return self.counts_FF

    def linked_pairs(self) -> set[tuple[int, int]]:
        """Latent pairs that co-occur: the co-occurrence graph's edges (:meth:`edges`) and every pair of members of one
        group. Matched controls (probes' enrichment-matched groups, interventions' co-firing latents) never hold both
        latents of such a pair."""
        e = self.edges()
        out: set[tuple[int, int]] = set(zip(e[:, 0].tolist(), e[:, 1].tolist()))
        for m in self.members().values():
            m = sorted(m)
            out.update((a, b) for x, a in enumerate(m) for b in m[x + 1:])
        return out

    def edges(self) -> np.ndarray:
        """The co-occurrence graph's edges ``[n, 2]`` (i < j): from the loaded pairs, else read from the folder's
        pairs.parquet (columns i, j, edge only); empty when no pairs were written (``cooc.write_pairs: none``)."""
        pairs = self.pairs
        if pairs is None and self.folder is not None:
            pairs = _read_pairs(self.folder / "pairs.parquet", ["i", "j", "edge"])
        if pairs is None or not {"i", "j", "edge"} <= set(pairs.columns):
            return np.zeros((0, 2), dtype=np.int64)
        e = pairs.loc[pairs["edge"].astype(bool), ["i", "j"]].to_numpy(np.int64)
        return np.sort(e, axis=1)

    # ------------------------------------------------------------------ views

    @property
    def d_sae(self) -> int:
        return int(len(self.occ_F))

    @property
    def n_tokens(self) -> int | None:
        n = self.manifest.get("n_tokens")
        return int(n) if isinstance(n, (int, float)) else None

    @property
    def groups_csv(self) -> Path | str:
        """The file a group id should be found in (for error messages)."""
        return self.folder / "groups.csv" if self.folder is not None else "the co-occurrence result's groups"

    def members(self) -> dict[str, tuple[int, ...]]:
        """group id -> sorted member latents, in the order of groups.csv."""
        t = self.groups_table
        return {str(g): tuple(sorted(set(int(x) for x in sub["latent"]))) for g, sub in t.groupby("group_id", sort=False)}

    def structure(self) -> dict[str, str]:
        """group id -> structure label ('' when the table has none)."""
        t = self.groups_table
        if "structure" not in t:
            return {str(g): "" for g in t["group_id"].unique()}
        return {str(g): str(sub["structure"].iloc[0]) for g, sub in t.groupby("group_id", sort=False)}

    @property
    def groups(self) -> list[Group]:
        """The groups as :class:`cooc.groups.Group` objects (needs the stage's full table)."""
        t = self.groups_table
        missing = [c for c in ("group_size", "structure", *STRUCTURE_COLUMNS) if c not in t]
        if missing:
            raise ConfigError("cooc", f"{self.groups_csv} lacks the structure column(s) {', '.join(missing)}; {HINT}")
        out = []
        for gid, sub in t.groupby("group_id", sort=False):
            r = sub.iloc[0]
            s = Structure(int(r["group_size"]), int(r["n_edges"]), float(r["density"]), float(r["degree_centralisation"]),
                          float(r["clustering"]), int(r["diameter"]), str(r["structure"]))
            out.append(Group(str(gid), tuple(int(x) for x in sub["latent"]), s))
        return out

    # ------------------------------------------------------------------ files

    def save(self, folder: str | Path) -> dict[str, str]:
        """Write the files into ``folder``; returns {name: path} of those written."""
        out = Path(folder)
        with atomic_path(out / "occurrences.npy") as tmp:
            np.save(tmp, np.asarray(self.occ_F).astype(np.int64))
        counts_FF = self.pair_counts()
        for name in ("counts.npz", "jaccard.npz"):
            (out / name).unlink(missing_ok=True)  # of an earlier save
        if counts_FF is not None:
            with atomic_path(out / "counts.npz") as tmp:
                sp.save_npz(tmp, counts_FF, compressed=False)
            with atomic_path(out / "jaccard.npz") as tmp:
                sp.save_npz(tmp, jaccard_matrix(counts_FF), compressed=False)
        if self.pairs is not None:
            with atomic_path(out / "pairs.parquet") as tmp:
                self.pairs.to_parquet(tmp, index=False)
        elif (out / "pairs.parquet").exists():
            (out / "pairs.parquet").unlink()  # stale file of an earlier run
        with atomic_path(out / "groups.csv") as tmp:
            self.groups_table.to_csv(tmp, index=False)
        write_json(out / "manifest.json", {**self.manifest, "format_version": FORMAT_VERSION})
        return {name: str(out / name) for name in FILES if (out / name).exists()}

    @classmethod
    def load(cls, folder: str | Path, pairs: bool | list[str] = False, counts: bool = False) -> "CoocResult":
        """Read a finished stage folder: manifest, firing counts and groups always; the scored pairs (all
        columns, or the ones listed) and the pair counts when asked. ConfigError naming the file and the fix
        when something is missing, unreadable, of another format version or inconsistent."""
        folder = Path(folder)
        mpath, gpath, opath = folder / "manifest.json", folder / "groups.csv", folder / "occurrences.npy"
        missing = [p.name for p in (gpath, opath, mpath) if not p.exists()]
        if missing:
            raise ConfigError("cooc", f"{folder} has no {' or '.join(missing)}: the co-occurrence stage has not run for "
                              f"this output folder; {HINT}")
        manifest = read_versioned(mpath, "co-occurrence", "cooc", FORMAT_VERSION, HINT)
        table = read_csv(gpath, "cooc", HINT, dtype={"group_id": str})
        need = {"latent", "group_id"}
        if not need <= set(table.columns):
            raise ConfigError("cooc", f"{gpath} lacks column(s) {sorted(need - set(table.columns))}; it was written by "
                              f"another version; {HINT}")
        try:
            occ = np.asarray(np.load(opath, allow_pickle=False)).astype(np.int64).ravel()
        except (ValueError, OSError, EOFError) as exc:
            raise ConfigError("cooc", f"{opath} is not a numpy array file ({exc}); {HINT}") from None
        table = _clean_groups(table, len(occ), gpath)
        result = cls(occ, table, manifest, folder=folder)
        if pairs is not False:
            result.pairs = _read_pairs(folder / "pairs.parquet", None if pairs is True else list(pairs))
        if counts:
            result.counts_FF = _read_npz(folder / "counts.npz")
        return result


def jaccard_matrix(counts_FF: sp.csr_matrix) -> sp.csr_matrix:
    """Symmetric float64 CSR of the Jaccard index of every stored pair (empty diagonal), from the counts
    (occurrences on the diagonal)."""
    occ = counts_FF.diagonal().astype(np.float64)
    upper = sp.triu(counts_FF, k=1).tocoo()
    c = upper.data.astype(np.float64)
    return symmetric(upper.row, upper.col, c / (occ[upper.row] + occ[upper.col] - c), None, counts_FF.shape[0])


def _clean_groups(df: pd.DataFrame, d_sae: int, path: Path) -> pd.DataFrame:
    """Rows with a group id and a latent in range; group ids as stripped strings, latents as int64."""
    df = df[df["group_id"].notna()]
    df = df.assign(group_id=df["group_id"].astype(str).str.strip(), latent=pd.to_numeric(df["latent"], errors="coerce"))
    df = df[(df["group_id"] != "") & df["latent"].notna()]
    df = df.assign(latent=df["latent"].astype(np.int64)).reset_index(drop=True)
    bad = df[(df["latent"] < 0) | (df["latent"] >= d_sae)]
    if len(bad):
        raise ConfigError("cooc", f"{path} names latent {int(bad['latent'].iloc[0])} but occurrences.npy has {d_sae} "
                          f"latents; the files come from different runs; {HINT}")
    return df


def _read_pairs(path: Path, columns: list[str] | None) -> pd.DataFrame | None:
    if not path.exists():
        return None  # cooc.write_pairs: none
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise ConfigError("cooc", f"{path} is not a readable parquet file ({type(exc).__name__}); {HINT}") from None


def _read_npz(path: Path) -> sp.csr_matrix | None:
    if not path.exists():
        return None
    try:
        return sp.load_npz(path).tocsr()
    except (ValueError, OSError, KeyError, EOFError) as exc:
        raise ConfigError("cooc", f"{path} is not a readable scipy sparse file ({type(exc).__name__}); {HINT}") from None
