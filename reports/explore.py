"""What the report shows about each group that no other stage keeps: top-activating contexts of every
member latent, a PCA view of the group's reconstructions with the context of every point, and the SAE's
quality on the run's own tokens.

One pass over the (cached) activation stream of the run's data section; the model itself is not run
again when ``stream.cache`` holds the activations. Outputs (``OUT/explore/``):

- ``contexts.csv``: group_id, latent, rank, activation, doc_id, context_index, position, left, token, right
  (the token that fires and its neighbours as text, for highlighting).
- ``scatter.csv``: group_id, pc1, pc2, strength (sum of member activations), n_active, top_latent,
  doc_id, context_index, position, char_start (in the document, to join probe labels), left, token, right: a deterministic sample of the tokens where the
  group fires, projected on the top two principal directions of the group-restricted reconstruction
  sum_i a_i W_dec[i] (the reference method's view; ``subspaces.reconstruction_pca``).
- ``summary.json``: per group the explained-variance ratios and token counts; the SAE's explained
  variance, mean L0 and never-firing fraction on these tokens; the SAE folder's own quality.json if any.
"""

from __future__ import annotations

import heapq
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sources.config import DataSpec, HookSpec, StreamSpec
from sources.errors import ConfigError
from sources.files import SavedResult, atomic_path, read_json, read_tables, read_versioned, write_json
from sources.sae_view import fires
from sources.stream import iter_activation_batches
from subspaces import reconstruction_pca

log = logging.getLogger(__name__)

CONTEXT_COLUMNS = ["group_id", "latent", "rank", "activation", "doc_id", "context_index", "position", "left", "token", "right"]
SCATTER_COLUMNS = ["group_id", "pc1", "pc2", "strength", "n_active", "top_latent", "doc_id", "context_index", "position",
                   "char_start", "left", "token", "right"]


@dataclass
class _GroupRows:
    """The member activations of every token where a group fires, in stream order."""
    acts: list[np.ndarray] = field(default_factory=list)
    where: list[np.ndarray] = field(default_factory=list)  # [n, 2] (context index, position)


@dataclass
class SAEStats:
    n_tokens: int = 0
    sum_l0: float = 0.0
    sse: float = 0.0
    sum_x_D: np.ndarray | None = None
    sum_x2: float = 0.0
    fired_F: np.ndarray | None = None

    def add(self, x_ND: torch.Tensor, recon_ND: torch.Tensor, latents_NF: torch.Tensor, threshold_F: torch.Tensor) -> None:
        x = x_ND.double()
        fired = fires(latents_NF, threshold_F)
        self.n_tokens += x.shape[0]
        self.sum_l0 += float(fired.sum())
        self.sse += float(((x - recon_ND.double()) ** 2).sum())
        s = x.sum(0).cpu().numpy()
        self.sum_x_D = s if self.sum_x_D is None else self.sum_x_D + s
        self.sum_x2 += float((x ** 2).sum())
        f = fired.any(0).cpu().numpy()
        self.fired_F = f if self.fired_F is None else self.fired_F | f

    def to_dict(self) -> dict:
        if not self.n_tokens:
            return {"n_tokens": 0}
        total_var = self.sum_x2 - float((self.sum_x_D ** 2).sum()) / self.n_tokens
        return {"n_tokens": self.n_tokens, "l0": self.sum_l0 / self.n_tokens,
                "explained_variance": 1.0 - self.sse / total_var if total_var > 0 else float("nan"),
                "never_fired_fraction": float(1.0 - self.fired_F.mean())}


FORMAT_VERSION = 1
"""Version of the files' layout; :meth:`ExploreResult.load` refuses another (the stage key includes it)."""
HINT = "rerun python -m experiments.steer with the same --out (and --fresh) to recompute the explore stage"


@dataclass
class ExploreResult(SavedResult):
    """What the explore stage collected: the member latents' top contexts, the groups' PCA points, the summary."""

    contexts: pd.DataFrame
    """CONTEXT_COLUMNS: the top contexts of every member latent."""
    scatter: pd.DataFrame
    """SCATTER_COLUMNS: a sample of the tokens where each group fires, on its top two principal directions."""
    summary: dict = field(repr=False)
    """Per group the members, firing tokens, explained-variance ratios; the SAE's quality on these tokens."""

    def save(self, folder: str | Path) -> None:
        out = Path(folder)
        for name, df in (("contexts.csv", self.contexts), ("scatter.csv", self.scatter)):
            with atomic_path(out / name, "out") as tmp:
                df.to_csv(tmp, index=False)
        write_json(out / "summary.json", {**self.summary, "format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, folder: str | Path) -> "ExploreResult":
        """Read a finished explore stage folder; ConfigError naming the file and the fix otherwise."""
        folder = Path(folder)
        summary = read_versioned(folder / "summary.json", "explore", "report", FORMAT_VERSION, HINT)
        tables = read_tables(folder, ("contexts.csv", "scatter.csv"), "report", HINT, dtype={"group_id": str, "doc_id": str})
        return cls(tables["contexts.csv"], tables["scatter.csv"], summary)


def collect(model, view, data: DataSpec, hook: HookSpec, stream: StreamSpec, groups: dict[str, tuple[int, ...]], *,
            top_contexts: int = 5, window: tuple[int, int] = (12, 4), max_points: int = 400, seed: int = 0,
            progress: bool = True, sae_quality: dict | None = None) -> ExploreResult:
    """Scan the stream once for ``groups`` (id -> member latents) with the SAE ``view`` (``sources.sae_view.SAEView``
    with the cooc stage's firing rule); returns the :class:`ExploreResult` (``.save(folder)`` writes its files)."""
    threshold_F = view.threshold_F
    union = np.array(sorted({m for ms in groups.values() for m in ms}), dtype=np.int64)
    col = {int(f): i for i, f in enumerate(union)}
    heaps: dict[int, list] = {int(f): [] for f in union}  # min-heaps of (activation, -order, ctx, pos)
    rows = {g: _GroupRows() for g in groups}
    member_cols = {g: np.array([col[m] for m in ms], dtype=np.int64) for g, ms in groups.items()}
    tokens: dict[int, np.ndarray] = {}
    doc_ids: dict[int, str] = {}
    char_starts: dict[int, np.ndarray] = {}
    stats = SAEStats()
    thr_F = torch.as_tensor(threshold_F, dtype=torch.float32)
    order = 0
    for batch in iter_activation_batches(model, data, hook, stream, progress=progress):
        mask = batch.mask_BL
        b_idx, pos = mask.nonzero(as_tuple=True)
        ctx_index = np.array([c.index for c in batch.contexts])[b_idx.numpy()]
        for c, t in zip(batch.contexts, batch.tokens_BL.cpu().numpy()):
            tokens[c.index] = t
            doc_ids[c.index] = getattr(c, "doc_id", "") or ""
            char_starts[c.index] = np.asarray(c.spans_L2)[:, 0]
        x_ND = batch.masked_acts_ND()
        lat_NF = view.encode(x_ND)
        recon = view.decode(lat_NF)
        stats.add(x_ND.float().to(recon.device), recon, lat_NF, thr_F.to(lat_NF.device))
        sub = lat_NF[:, torch.as_tensor(union, device=lat_NF.device)].cpu().numpy()  # [N, U]
        fired = fires(sub, threshold_F[union])
        where = np.column_stack([ctx_index, pos.numpy()])
        for j, f in enumerate(union):  # top contexts per latent
            hits = np.flatnonzero(fired[:, j])
            if not len(hits):
                continue
            best = hits[np.argsort(-sub[hits, j], kind="stable")[:top_contexts]]
            h = heaps[int(f)]
            for r in best:
                item = (float(sub[r, j]), -(order + int(r)), int(where[r, 0]), int(where[r, 1]))
                if len(h) < top_contexts:
                    heapq.heappush(h, item)
                elif item > h[0]:
                    heapq.heapreplace(h, item)
        for g, cols in member_cols.items():
            hit = fired[:, cols].any(1)
            if hit.any():
                rows[g].acts.append(sub[hit][:, cols].astype(np.float32))
                rows[g].where.append(where[hit])
        order += len(where)
    if not stats.n_tokens:
        raise ConfigError("data", "the corpus gave no tokens to explore; check data.max_tokens and the corpus")

    tok = model.tokenizer
    left_n, right_n = window

    def text(ctx: int, p: int) -> tuple[str, str, str]:
        t = tokens[ctx]
        return (tok.decode(t[max(0, p - left_n):p].tolist()), tok.decode(t[p:p + 1].tolist()),
                tok.decode(t[p + 1:p + 1 + right_n].tolist()))

    ctx_rows = []
    for g, ms in groups.items():
        for m in ms:
            for rank, (a, _, c, p) in enumerate(sorted(heaps[int(m)], reverse=True)):
                ctx_rows.append([g, int(m), rank, a, doc_ids.get(c, ""), c, p, *text(c, p)])
    contexts = pd.DataFrame(ctx_rows, columns=CONTEXT_COLUMNS)

    rng = np.random.default_rng(seed)
    scatter_parts, per_group = [], {}
    W = np.asarray(view.decoder_np(), dtype=np.float64)
    for g, ms in groups.items():
        r = rows[g]
        n = sum(len(a) for a in r.acts)
        per_group[g] = {"members": [int(m) for m in ms], "firing_tokens": int(n)}
        if n < 3:
            per_group[g]["note"] = "fewer than 3 firing tokens: no PCA view"
            continue
        A = np.concatenate(r.acts)
        where = np.concatenate(r.where)
        members = np.asarray(ms, dtype=np.int64)
        pca = reconstruction_pca(sp.csr_matrix(A), W[members], range(len(members)), n_components=2,
                                 threshold=threshold_F[members])
        xy = pca.scores(A[pca.rows_N].astype(np.float64) @ W[members])
        if xy.shape[1] == 1:
            xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
        keep = np.sort(rng.choice(len(xy), size=min(max_points, len(xy)), replace=False))
        sel = pca.rows_N[keep]
        acts = A[sel]
        texts = [text(int(c), int(p)) for c, p in where[sel]]
        scatter_parts.append(pd.DataFrame({
            "group_id": g, "pc1": xy[keep, 0], "pc2": xy[keep, 1], "strength": acts.sum(1),
            "n_active": fires(acts, threshold_F[members]).sum(1), "top_latent": members[acts.argmax(1)],
            "doc_id": [doc_ids.get(int(c), "") for c in where[sel, 0]], "context_index": where[sel, 0],
            "position": where[sel, 1],
            "char_start": [int(char_starts[int(c)][int(p)]) for c, p in where[sel]], "left": [t[0] for t in texts], "token": [t[1] for t in texts],
            "right": [t[2] for t in texts]}))
        per_group[g]["explained_variance_ratio"] = [float(v) for v in pca.explained_variance_ratio_K]
        per_group[g]["points"] = int(len(keep))
    scatter = pd.concat(scatter_parts, ignore_index=True) if scatter_parts else pd.DataFrame(columns=SCATTER_COLUMNS)
    summary = {"groups": per_group, "sae": {**stats.to_dict(), "firing_rule": "activation > threshold"},
               "sae_quality_file": sae_quality, "top_contexts": top_contexts, "window": list(window),
               "max_points": max_points, "seed": seed}
    return ExploreResult(contexts, scatter, summary)


def read_quality(folder: Path | None) -> dict | None:
    """The SAE folder's quality.json (held-out quality measured when it was trained), if present."""
    if folder is None or not (Path(folder) / "quality.json").exists():
        return None
    try:
        return read_json(Path(folder) / "quality.json")
    except (OSError, ValueError):
        return None
