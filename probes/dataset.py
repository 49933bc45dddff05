"""Probe datasets: task tokens found in the corpus, run through the model and the SAE.

Construction (documented for users in docs/probes.md):

1. Documents come from the experiment's ``data:`` section in corpus order (held-out documents are
   skipped exactly as the activation stream skips them), at most ``max_documents`` of them.
2. Each task finds its candidates in the document *text* (URLs, labelled word occurrences), then a
   seeded random sample of documents/occurrences is taken so that the examples spread over many
   documents (``probes.max_tokens`` task tokens at most).
3. A chosen document is tokenised once (with character offsets); every task token gets a *probe
   window*: BOS followed by the document's tokens from ``prefix_tokens`` before the first task token
   of the window up to the last task token that still fits into ``data.context_len`` positions.
   The model (causal) therefore sees at least ``prefix_tokens`` tokens of the same document before
   every task token, and nothing after the window's last task token.
4. Windows run through the model up to the hook; the residual activations at the task tokens and
   the SAE's latent activations there are kept. For every cooc group we also count on how many task
   tokens and how many other window tokens any member fires (for enrichment-based selection).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sources.config import HookSpec
from sources.corpora import pad_batch, special_ids
from sources.errors import ConfigError
from sources.progress import progress_bar
from sources.sae_view import as_view, fires
from sources.patching import read_sites
from sources.stream import hook_activations

from probes.documents import Doc, iter_probe_documents
from probes.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class ProbeData:
    """Task tokens of one task family, aligned row by row."""

    family: str
    acts_ND: np.ndarray
    """Residual activations at the hook (float32)."""
    latents_NF: sp.csr_matrix
    """SAE latent activations (float32)."""
    examples: pd.DataFrame
    """One row per task token: doc_index, doc_id, token_index, char_start, char_end, token and task fields."""
    group_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    other_fires_G: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Other (non-task) window tokens on which any member of group g fires."""
    fires_NG: sp.csr_matrix | None = None
    """Per task token (row), the groups of which any member fires there (per-target selection)."""
    other_fires_F: np.ndarray | None = None
    """Other window tokens on which each latent fires (enrichment-matched controls)."""
    neighbour_acts_ND: np.ndarray | None = None
    """Per task token, the residual at the hook two positions before its first token (``first_token_index`` of its
    row: a word's first token) in its window (BOS when there is none): the topic control of word sense."""
    late_acts_ND: np.ndarray | None = None
    """Per task token, the activations at the task's later site (``Task.late_hook``), or None."""
    n_other: int = 0
    n_windows: int = 0
    n_window_tokens: int = 0
    n_candidate_docs: int = 0
    windows: list = field(default_factory=list)
    """The probe windows run through the model: ``(doc_index, window_start, tokens_L, mask_L)`` each."""

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def doc_N(self) -> np.ndarray:
        return self.examples["doc_index"].to_numpy()


def plan_windows(positions, prefix: int, context_len: int, rng: np.random.Generator | None = None) -> list[tuple[int, int, list[int]]]:
    """Greedy probe windows over sorted token positions of one document.

    Returns ``(start, end, covered)``: the window holds document tokens ``start..end`` (inclusive) after
    BOS, with ``end - start + 2 <= context_len``, and ``covered`` are the task positions it serves;
    each has at least ``min(prefix, (context_len - 2) // 2)`` tokens of its document before it in the
    window (fewer only at the start of the document). The prefix is capped at half the window so that
    a window always has room for the task tokens that follow. With ``rng`` each window's prefix is a random
    integer in ``[prefix // 4, prefix]`` instead (so that a task token's position in the window does not follow from
    its position in the document's structure).
    """
    P = sorted(set(int(p) for p in positions))
    body = context_len - 1
    if body < 1:
        raise ValueError("context_len must be >= 2")
    prefix = min(prefix, (body - 1) // 2)
    out = []
    i = 0
    while i < len(P):
        pre = prefix if rng is None else int(rng.integers(prefix // 4, prefix + 1))
        start = max(0, P[i] - pre)
        limit = start + body - 1
        j = i
        while j + 1 < len(P) and P[j + 1] <= limit:
            j += 1
        out.append((start, P[j], P[i:j + 1]))
        i = j + 1
    return out


# --- model pass -----------------------------------------------------------------------------------


@dataclass
class _Window:
    doc: Doc
    start: int
    end: int
    tokens: np.ndarray
    mask: np.ndarray
    task_pos: dict[int, int]
    """window position -> index into doc.rows"""
    ignore_pos: set[int]


def window_tokens(ids: np.ndarray, start: int, end: int, bos: int, masked: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """A probe window's tokens (BOS + document tokens ``start..end``, int64) and content mask (False on BOS and on
    special tokens); the one construction of a window, for the probes stage and the interventions' rebuild."""
    body = ids[start:end + 1]
    return np.concatenate([[bos], body]).astype(np.int64), np.concatenate([[False], ~np.isin(body, list(masked))])


def build_windows(docs: list[Doc], tokenizer, prefix: int, context_len: int,
                  rng: np.random.Generator | None = None) -> list[_Window]:
    bos, _, masked = special_ids(tokenizer)
    out = []
    for doc in docs:
        row_of = {}
        for r_i, r in enumerate(doc.rows):
            row_of.setdefault(r["token_index"], []).append(r_i)
        for start, end, covered in plan_windows(row_of, prefix, context_len, rng):
            tokens, mask = window_tokens(doc.ids, start, end, bos, masked)
            task_pos = {}
            for p in covered:
                for r_i in row_of[p]:
                    task_pos.setdefault(p - start + 1, r_i)
                    doc.rows[r_i]["_visible_from"] = int(doc.spans[start, 0])
            ignore_pos = {p - start + 1 for p in doc.ignore if start <= p <= end}
            out.append(_Window(doc, start, end, tokens, mask, task_pos, ignore_pos))
    return out


def run_windows(family: str, windows: list[_Window], model, sae, hook: HookSpec, batch_size: int, threshold_F: np.ndarray,
                membership_FG: sp.csr_matrix | None, group_ids: np.ndarray, progress: bool = False,
                late_hook: HookSpec | None = None) -> ProbeData:
    """Forward every window to the hook (and to ``late_hook`` in the same pass, when given), encode with the SAE,
    keep the task tokens' rows and group firing counts."""
    _, pad, _ = special_ids(model.tokenizer)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].tokens))
    n_groups = 0 if membership_FG is None else membership_FG.shape[1]
    other_fires = np.zeros(n_groups, dtype=np.int64)
    n_other = 0
    other_F = np.zeros(int(sae.W_dec.shape[0]), dtype=np.int64)
    fires_rows: list[sp.csr_matrix] = []
    nb_rows: list[np.ndarray] = []
    late_rows: list[np.ndarray] = []
    acts_rows: list[np.ndarray] = []
    lat_rows: list[sp.csr_matrix] = []
    meta: list[dict] = []
    thr = torch.as_tensor(threshold_F)
    view = as_view(sae)
    n_tok = 0
    bar = progress_bar(total=len(windows), unit="win", desc=f"probe {family}", progress=progress, mininterval=2.0)
    for b0 in range(0, len(order), batch_size):
        batch = [windows[i] for i in order[b0:b0 + batch_size]]
        tokens, mask = pad_batch([w.tokens for w in batch], [w.mask for w in batch], pad)
        if late_hook is None:
            acts = hook_activations(model, torch.from_numpy(tokens), hook)
        else:
            acts, late = read_sites(model, torch.from_numpy(tokens), [hook, late_hook], logits=False).acts
        mask_t = torch.from_numpy(mask).to(acts.device)
        b_idx, pos = (x.cpu().numpy() for x in mask_t.nonzero(as_tuple=True))
        flat = acts[mask_t]
        lat = view.encode(flat).cpu()
        n_tok += len(b_idx)
        is_task = np.array([pos[j] in batch[b_idx[j]].task_pos for j in range(len(b_idx))], dtype=bool)
        is_ignored = np.array([pos[j] in batch[b_idx[j]].ignore_pos for j in range(len(b_idx))], dtype=bool)
        fired = fires(lat, thr).numpy()
        other_F += fired[~is_task & ~is_ignored].sum(0)
        if n_groups:
            any_G = (sp.csr_matrix(fired.astype(np.float32)) @ membership_FG).toarray() > 0
            other_fires += any_G[~is_task & ~is_ignored].sum(0)
            fires_rows.append(sp.csr_matrix(any_G[is_task]))
        n_other += int((~is_task & ~is_ignored).sum())
        sel = np.flatnonzero(is_task)
        rows_sel = [batch[b_idx[j]].doc.rows[batch[b_idx[j]].task_pos[pos[j]]] for j in sel]
        acts_rows.append(flat[torch.from_numpy(sel).to(flat.device)].float().cpu().numpy())
        if late_hook is not None:
            late_rows.append(late[mask_t][torch.from_numpy(sel).to(late.device)].float().cpu().numpy())
        # the topic control: two tokens before the task's first token (a word's first token; default the token itself)
        span = np.array([r["token_index"] - r.get("first_token_index", r["token_index"]) for r in rows_sel], dtype=np.int64)
        nb_pos = np.maximum(pos[sel] - span - NEIGHBOUR_OFFSET, 0)
        nb_rows.append(acts[torch.from_numpy(b_idx[sel]).to(acts.device), torch.from_numpy(nb_pos).to(acts.device)].float().cpu().numpy())
        lat_rows.append(sp.csr_matrix(lat[torch.from_numpy(sel)].numpy()))
        for j, r in zip(sel, rows_sel):
            w = batch[b_idx[j]]
            tok_id = int(w.tokens[pos[j]])
            meta.append({"doc_index": w.doc.doc_index, "doc_id": w.doc.doc_id, "char_start": int(w.doc.spans[r["token_index"], 0]),
                         "char_end": int(w.doc.spans[r["token_index"], 1]), "token": model.tokenizer.decode([tok_id]),
                         "window_start": w.start, **r})
        bar.update(len(batch))
    bar.close()
    d_model = int(getattr(model, "d_model", 0)) or (acts_rows[0].shape[1] if acts_rows else 0)
    d_sae = int(sae.W_dec.shape[0])
    acts_ND = np.concatenate(acts_rows) if acts_rows else np.zeros((0, d_model), dtype=np.float32)
    latents_NF = sp.vstack(lat_rows).tocsr() if lat_rows else sp.csr_matrix((0, d_sae), dtype=np.float32)
    examples = pd.DataFrame(meta)
    fires_NG = sp.vstack(fires_rows).tocsr() if fires_rows else sp.csr_matrix((len(examples), n_groups), dtype=bool)
    nb_ND = np.concatenate(nb_rows) if nb_rows else np.zeros((0, d_model), dtype=np.float32)
    late_ND = np.concatenate(late_rows) if late_rows else None
    # rows in a stable order: by document, then token
    if len(examples):
        order_rows = np.lexsort((examples["token_index"].to_numpy(), examples["doc_index"].to_numpy()))
        examples = examples.iloc[order_rows].reset_index(drop=True)
        acts_ND = acts_ND[order_rows]
        latents_NF = latents_NF[order_rows]
        fires_NG = fires_NG[order_rows]
        nb_ND = nb_ND[order_rows]
        late_ND = None if late_ND is None else late_ND[order_rows]
    saved = [(w.doc.doc_index, w.start, w.tokens, w.mask) for w in windows]
    return ProbeData(family, acts_ND.astype(np.float32), latents_NF.astype(np.float32), examples, np.asarray(group_ids),
                     other_fires_G=other_fires, fires_NG=fires_NG, other_fires_F=other_F,
                     neighbour_acts_ND=nb_ND.astype(np.float32), late_acts_ND=late_ND, n_other=n_other,
                     n_windows=len(windows), n_window_tokens=n_tok, windows=saved)


NEIGHBOUR_OFFSET = 2
"""The topic control reads the residual this many positions before a task token's first token."""


def membership_matrix(groups: dict[str, tuple[int, ...]], d_sae: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Sparse [d_sae, G] membership of latents in groups, and the group ids in column order."""
    ids = np.array(sorted(groups), dtype=object)
    rows, cols = [], []
    for g, gid in enumerate(ids):
        for lat in groups[gid]:
            if not 0 <= lat < d_sae:
                raise ConfigError("cooc", f"group {gid} has latent {lat} outside the SAE's {d_sae} latents; "
                                  "the cooc outputs belong to another SAE: rerun python -m experiments.cooc")
            rows.append(lat)
            cols.append(g)
    M = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(d_sae, len(ids)))
    return M, ids


def build_probe_data(family: str, cfg, model, sae, groups: dict[str, tuple[int, ...]], threshold_F: np.ndarray,
                     progress: bool = False) -> tuple[ProbeData | None, dict]:
    """The probe dataset of the registered task ``family`` for an experiment config, plus a report dict.

    Returns ``(None, report)`` when the corpus holds no candidate at all.
    """
    pc = cfg.probes
    task = get_task(family)
    rng = np.random.default_rng([int(cfg.seed), _family_code(family)])
    docs = iter_probe_documents(cfg.data.reading(pc.evaluate_on), pc.max_documents)
    report: dict = {"family": family}
    sel = task.select(docs, model.tokenizer, pc, rng)
    chosen, n_cand = sel.docs, sel.n_candidates
    report["candidate_documents"] = n_cand
    report.update(sel.report)
    if not chosen:
        return None, report
    prefix_rng = np.random.default_rng([int(cfg.seed), _family_code(family), 11]) if pc.random_prefix else None
    windows = build_windows(chosen, model.tokenizer, pc.prefix_tokens, cfg.data.context_len, prefix_rng)
    M, ids = membership_matrix(groups, int(sae.W_dec.shape[0])) if groups else (None, np.zeros(0, dtype=object))
    late = task.late_hook(cfg, model)
    data = run_windows(family, windows, model, sae, cfg.hook, cfg.stream.batch_size, threshold_F, M, ids, progress, late)
    data.n_candidate_docs = n_cand
    data.examples = task.finish(data.examples)
    if "_visible_from" in data.examples:
        data.examples = data.examples.rename(columns={"_visible_from": "visible_from_char"})
    report.update({"documents": int(data.examples["doc_index"].nunique()) if data.n else 0, "task_tokens": data.n,
                   "windows": data.n_windows, "window_tokens": data.n_window_tokens})
    return data, report


def _family_code(family: str) -> int:
    return sum(ord(c) for c in family)


WINDOWS_FILE = "windows.npz"
"""The probes stage's windows (``OUT/probes/windows.npz``): what the interventions stage's task effects run on."""


def save_windows(path, windows: dict[str, list]) -> None:
    """Write every task's probe windows (``ProbeData.windows``) to one ``.npz``: ragged token and mask arrays
    with, per window, its task, document index, start and offset."""
    from sources.files import atomic_path

    rows = [(task, *w) for task, ws in windows.items() for w in ws]
    lengths = np.array([len(r[3]) for r in rows], dtype=np.int64)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, task=np.array([r[0] for r in rows], dtype=str), doc_index=np.array([r[1] for r in rows], dtype=np.int64),
                 window_start=np.array([r[2] for r in rows], dtype=np.int64),
                 offset=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                 tokens=np.concatenate([r[3] for r in rows]).astype(np.int64) if rows else np.zeros(0, dtype=np.int64),
                 mask=np.concatenate([r[4] for r in rows]).astype(bool) if rows else np.zeros(0, dtype=bool))


def load_windows(path) -> dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]:
    """``(task, doc_index, window_start) -> (tokens_L, mask_L)`` from :func:`save_windows`' file; ConfigError if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            task, doc, start, off, tokens, mask = (z[k] for k in ("task", "doc_index", "window_start", "offset", "tokens", "mask"))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError("probes", f"{path} is not a probe-windows file ({type(exc).__name__}); rerun the probes stage "
                                    "(python -m experiments.probe --fresh)") from None
    return {(str(t), int(d), int(s)): (tokens[off[i]:off[i + 1]], mask[off[i]:off[i + 1]])
            for i, (t, d, s) in enumerate(zip(task, doc, start))}

