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
from itertools import islice
from typing import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from sources.config import DataSpec, HookSpec
from sources.corpora import iter_documents, pad_batch, special_ids
from sources.errors import ConfigError
from sources.progress import progress_bar
from sources.sae_view import as_view, fires
from sources.stream import hook_activations

from probes.tasks import find_urls, label_occurrences, lexicon_regex, tokens_at_chars, url_token_targets

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
    task_fires_G: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Task tokens on which any member of group g fires."""
    other_fires_G: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Other (non-task) window tokens on which any member of group g fires."""
    n_other: int = 0
    n_windows: int = 0
    n_window_tokens: int = 0
    n_candidate_docs: int = 0

    @property
    def n(self) -> int:
        return len(self.examples)

    @property
    def doc_N(self) -> np.ndarray:
        return self.examples["doc_index"].to_numpy()


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


def plan_windows(positions, prefix: int, context_len: int) -> list[tuple[int, int, list[int]]]:
    """Greedy probe windows over sorted token positions of one document.

    Returns ``(start, end, covered)``: the window holds document tokens ``start..end`` (inclusive) after
    BOS, with ``end - start + 2 <= context_len``, and ``covered`` are the task positions it serves;
    each has at least ``min(prefix, (context_len - 2) // 2)`` tokens of its document before it in the
    window (fewer only at the start of the document). The prefix is capped at half the window so that
    a window always has room for the task tokens that follow.
    """
    P = sorted(set(int(p) for p in positions))
    body = context_len - 1
    if body < 1:
        raise ValueError("context_len must be >= 2")
    prefix = min(prefix, (body - 1) // 2)
    out = []
    i = 0
    while i < len(P):
        start = max(0, P[i] - prefix)
        limit = start + body - 1
        j = i
        while j + 1 < len(P) and P[j + 1] <= limit:
            j += 1
        out.append((start, P[j], P[i:j + 1]))
        i = j + 1
    return out


@dataclass
class _Doc:
    doc_index: int
    doc_id: str
    text: str
    ids: np.ndarray
    spans: np.ndarray
    rows: list[dict]
    """Task tokens: dicts with token_index and task fields."""
    ignore: set[int]
    """Token positions that are task-like but not chosen (neither task nor 'other' for enrichment)."""


def _tokenize(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    spans = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return ids, spans


# --- task-specific example selection ------------------------------------------------------------


def select_url_examples(docs, tokenizer, max_tokens: int, max_urls_per_doc: int, rng: np.random.Generator) -> tuple[list[_Doc], int]:
    """Random documents with URLs, up to ``max_urls_per_doc`` random URLs each, until ``max_tokens`` URL tokens."""
    cands = [(di, did, text, urls) for di, did, text in docs if (urls := find_urls(text))]
    order = rng.permutation(len(cands))
    chosen: list[_Doc] = []
    total = 0
    for k in order:
        if total >= max_tokens:
            break
        di, did, text, urls = cands[k]
        pick = sorted(rng.choice(len(urls), size=min(max_urls_per_doc, len(urls)), replace=False).tolist())
        ids, spans = _tokenize(tokenizer, text)
        rows: list[dict] = []
        ignore: set[int] = set()
        picked = {urls[i].start for i in pick}
        for u in urls:
            t = url_token_targets(spans, u, text)
            if u.start not in picked:
                ignore.update(int(p) for p in t.positions)
                continue
            if total >= max_tokens:
                ignore.update(int(p) for p in t.positions)
                continue
            for p, a, b in zip(t.positions, t.since_start, t.since_slash):
                rows.append({"token_index": int(p), "url": u.text, "url_start": u.start, "since_start": int(a), "since_slash": int(b)})
            total += len(t.positions)
        taken = {r["token_index"] for r in rows}
        ignore -= taken
        if rows:
            chosen.append(_Doc(di, did, text, ids, spans, rows, ignore))
    return chosen, len(cands)


def select_word_sense_examples(docs, tokenizer, lexicon: dict, window_words: int, max_per_word: int, max_tokens: int,
                               rng: np.random.Generator) -> tuple[list[_Doc], int, pd.DataFrame]:
    """Labelled occurrences, at most ``max_per_word`` per word (up to half per sense when both senses have enough).

    Also returns a table of label counts per word and status over *all* occurrences found (for the report).
    """
    pattern = lexicon_regex(lexicon)
    found: list[tuple[int, str, str, object]] = []
    stats: dict[tuple[str, str], int] = {}
    n_docs = 0
    texts = {}
    for di, did, text in docs:
        if not pattern.search(text):
            continue
        n_docs += 1
        for occ in label_occurrences(text, lexicon, window_words):
            key = (occ.word, occ.sense or occ.status)
            stats[key] = stats.get(key, 0) + 1
            if occ.sense is not None:
                found.append((di, did, occ.word, occ))
                texts[di] = (did, text)
    by_word: dict[str, dict[str, list[int]]] = {}
    for k, (_, _, w, occ) in enumerate(found):
        by_word.setdefault(w, {}).setdefault(occ.sense, []).append(k)
    keep: list[int] = []
    for w in sorted(by_word):
        senses = by_word[w]
        pools = {s: rng.permutation(idx).tolist() for s, idx in sorted(senses.items())}
        half = max_per_word // 2
        take = {s: min(len(p), half) for s, p in pools.items()}
        spare = max_per_word - sum(take.values())
        for s, p in pools.items():  # fill up from a sense with more occurrences
            extra = min(spare, len(p) - take[s])
            take[s] += extra
            spare -= extra
        for s, p in pools.items():
            keep.extend(p[:take[s]])
    if len(keep) > max_tokens:
        keep = rng.choice(keep, size=max_tokens, replace=False).tolist()
    per_doc: dict[int, list] = {}
    for k in sorted(keep):
        di, did, w, occ = found[k]
        per_doc.setdefault(di, []).append(occ)
    chosen: list[_Doc] = []
    for di in sorted(per_doc):
        did, text = texts[di]
        ids, spans = _tokenize(tokenizer, text)
        rows = []
        at = tokens_at_chars(spans, [occ.end - 1 for occ in per_doc[di]])
        for occ, p in zip(per_doc[di], at):
            if p < 0:
                continue
            rows.append({"token_index": int(p), "word": occ.word, "sense": occ.sense, "cues": " ".join(occ.cues),
                         "_occ": occ})
        # other occurrences of lexicon words in the document are neither task nor 'other' tokens
        others = tokens_at_chars(spans, [m.end() - 1 for m in pattern.finditer(text)])
        ignore = {int(p) for p in others if p >= 0} - {r["token_index"] for r in rows}
        if rows:
            chosen.append(_Doc(di, did, text, ids, spans, rows, ignore))
    table = pd.DataFrame([{"word": w, "label": lab, "count": c} for (w, lab), c in sorted(stats.items())],
                         columns=["word", "label", "count"])
    return chosen, n_docs, table


# --- model pass -----------------------------------------------------------------------------------


@dataclass
class _Window:
    doc: _Doc
    start: int
    end: int
    tokens: np.ndarray
    mask: np.ndarray
    task_pos: dict[int, int]
    """window position -> index into doc.rows"""
    ignore_pos: set[int]


def build_windows(docs: list[_Doc], tokenizer, prefix: int, context_len: int) -> list[_Window]:
    bos, _, masked = special_ids(tokenizer)
    out = []
    for doc in docs:
        row_of = {}
        for r_i, r in enumerate(doc.rows):
            row_of.setdefault(r["token_index"], []).append(r_i)
        for start, end, covered in plan_windows(row_of, prefix, context_len):
            body = doc.ids[start:end + 1]
            tokens = np.concatenate([[bos], body]).astype(np.int64)
            mask = np.concatenate([[False], ~np.isin(body, list(masked))])
            task_pos = {}
            for p in covered:
                for r_i in row_of[p]:
                    task_pos.setdefault(p - start + 1, r_i)
                    doc.rows[r_i]["_visible_from"] = int(doc.spans[start, 0])
            ignore_pos = {p - start + 1 for p in doc.ignore if start <= p <= end}
            out.append(_Window(doc, start, end, tokens, mask, task_pos, ignore_pos))
    return out


def run_windows(family: str, windows: list[_Window], model, sae, hook: HookSpec, batch_size: int, threshold_F: np.ndarray,
                membership_FG: sp.csr_matrix | None, group_ids: np.ndarray, progress: bool = False) -> ProbeData:
    """Forward every window to the hook, encode with the SAE, keep the task tokens' rows and group firing counts."""
    _, pad, _ = special_ids(model.tokenizer)
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i].tokens))
    n_groups = 0 if membership_FG is None else membership_FG.shape[1]
    task_fires = np.zeros(n_groups, dtype=np.int64)
    other_fires = np.zeros(n_groups, dtype=np.int64)
    n_other = 0
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
        acts = hook_activations(model, torch.from_numpy(tokens), hook)
        mask_t = torch.from_numpy(mask).to(acts.device)
        b_idx, pos = (x.cpu().numpy() for x in mask_t.nonzero(as_tuple=True))
        flat = acts[mask_t]
        lat = view.encode(flat).cpu()
        n_tok += len(b_idx)
        is_task = np.array([pos[j] in batch[b_idx[j]].task_pos for j in range(len(b_idx))], dtype=bool)
        is_ignored = np.array([pos[j] in batch[b_idx[j]].ignore_pos for j in range(len(b_idx))], dtype=bool)
        if n_groups:
            fired = fires(lat, thr).numpy()
            any_G = (sp.csr_matrix(fired.astype(np.float32)) @ membership_FG).toarray() > 0
            task_fires += any_G[is_task].sum(0)
            other_fires += any_G[~is_task & ~is_ignored].sum(0)
        n_other += int((~is_task & ~is_ignored).sum())
        sel = np.flatnonzero(is_task)
        acts_rows.append(flat[torch.from_numpy(sel).to(flat.device)].float().cpu().numpy())
        lat_rows.append(sp.csr_matrix(lat[torch.from_numpy(sel)].numpy()))
        for j in sel:
            w = batch[b_idx[j]]
            r = w.doc.rows[w.task_pos[pos[j]]]
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
    # rows in a stable order: by document, then token
    if len(examples):
        order_rows = np.lexsort((examples["token_index"].to_numpy(), examples["doc_index"].to_numpy()))
        examples = examples.iloc[order_rows].reset_index(drop=True)
        acts_ND = acts_ND[order_rows]
        latents_NF = latents_NF[order_rows]
    return ProbeData(family, acts_ND.astype(np.float32), latents_NF.astype(np.float32), examples, np.asarray(group_ids),
                     task_fires, other_fires, n_other, len(windows), n_tok)


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
    """The probe dataset of ``family`` (url_position | word_sense) for an experiment config, plus a report dict.

    Returns ``(None, report)`` when the corpus holds no candidate at all.
    """
    pc = cfg.probes
    rng = np.random.default_rng([int(cfg.seed), _family_code(family)])
    docs = iter_probe_documents(cfg.data, pc.max_documents)
    report: dict = {"family": family}
    if family == "url_position":
        chosen, n_cand = select_url_examples(docs, model.tokenizer, pc.max_tokens, pc.url_position.max_urls_per_doc, rng)
        report["candidate_documents"] = n_cand
    elif family == "word_sense":
        ws = pc.word_sense
        lexicon = {w: e.model_dump() for w, e in ws.lexicon.items()}
        chosen, n_cand, table = select_word_sense_examples(docs, model.tokenizer, lexicon, ws.window_words, ws.max_per_word,
                                                           pc.max_tokens, rng)
        report["candidate_documents"] = n_cand
        report["label_counts"] = table.to_dict(orient="records")
    else:  # pragma: no cover - the config restricts the names
        raise ConfigError("probes.tasks", f"unknown task {family!r}")
    if not chosen:
        return None, report
    windows = build_windows(chosen, model.tokenizer, pc.prefix_tokens, cfg.data.context_len)
    M, ids = membership_matrix(groups, int(sae.W_dec.shape[0])) if groups else (None, np.zeros(0, dtype=object))
    data = run_windows(family, windows, model, sae, cfg.hook, cfg.stream.batch_size, threshold_F, M, ids, progress)
    data.n_candidate_docs = n_cand
    if family == "word_sense" and len(data.examples):
        occ = data.examples.pop("_occ")
        vis = data.examples["_visible_from"].to_numpy()
        data.examples["resolved"] = [o.resolved(int(v)) for o, v in zip(occ, vis)]
    if "_visible_from" in data.examples:
        data.examples = data.examples.rename(columns={"_visible_from": "visible_from_char"})
    report.update({"documents": int(data.examples["doc_index"].nunique()) if data.n else 0, "task_tokens": data.n,
                   "windows": data.n_windows, "window_tokens": data.n_window_tokens})
    return data, report


def _family_code(family: str) -> int:
    return sum(ord(c) for c in family)
