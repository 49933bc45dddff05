"""Word sense: the sense of an ambiguous word, labelled by cue words around it in the same document.

Targets: ``word_sense/<word>/sense`` for every lexicon word (binary: its two senses), and ``word_sense/resolved``
(binary: an own-sense cue precedes the word inside the window), pooled over words and, with ``balance_resolved``,
balanced within each word. The interventions stage reads out the sense targets only (``resolved`` is about the
window, not about what the model reads).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from probes.comparison import Target
from probes.documents import Doc, tokenize
from probes.lexicon import DEFAULT_LEXICON
from probes.tasks.base import Selection, Task, too_few
from probes.text import label_occurrences, lexicon_regex, tokens_at_chars
from sources.config import Section


class WordSenseEntry(Section):
    """One ambiguous word: exactly two senses with their cue words."""

    senses: dict[str, list[str]]
    """Sense name -> cue words (single lowercase words, matched as whole words, case-insensitively)."""
    exclude: list[str] = []
    """Phrases containing the word (e.g. "west bank") whose occurrences are dropped."""
    window_before: int | None = Field(None, ge=0)
    """Words before the occurrence searched for cues (default: word_sense.window_words)."""
    window_after: int | None = Field(None, ge=0)
    """Words after the occurrence searched for cues (default: word_sense.window_words)."""

    @field_validator("senses")
    @classmethod
    def _two_senses(cls, v):
        if len(v) != 2:
            raise ValueError(f"give exactly two senses, got {len(v)}: {', '.join(v) or 'none'}")
        for name, cues in v.items():
            if not cues:
                raise ValueError(f"sense {name!r} has no cue words")
            bad = [c for c in cues if not c.isalpha()]
            if bad:
                raise ValueError(f"cue words must be single words of letters; sense {name!r} has {bad[:3]}")
        a, b = (set(c.lower() for c in cues) for cues in v.values())
        if a & b:
            raise ValueError(f"cue words shared by both senses: {sorted(a & b)[:5]}")
        return {name: [c.lower() for c in cues] for name, cues in v.items()}


class WordSenseSpec(Section):
    lexicon: dict[str, WordSenseEntry] = Field(default_factory=lambda: {w: WordSenseEntry(**e) for w, e in DEFAULT_LEXICON.items()})
    """Ambiguous words and their sense cues (default: the built-in lexicon in probes/lexicon.py)."""
    window_words: int = Field(15, ge=1)
    """Words on each side of an occurrence searched for cue words."""
    max_per_word: int = Field(200, ge=2)
    """At most this many occurrences per word (drawn at random, up to half per sense when both have enough)."""
    min_per_class: int = Field(20, ge=2)
    """A sense (or resolved) target needs at least this many examples of each class, else it is skipped with a reason."""
    balance_resolved: bool = True
    """Resolved-vs-unresolved uses, per word, equally many of each, so word identity carries no information about it."""
    uncertainty_offset: int | None = Field(8, ge=1)
    """The model-based uncertainty target reads the sense at this many layers after the hook (capped at the last
    layer): word_sense/uncertainty is the entropy of a cross-fitted sense probe there. None: no such target."""

    @field_validator("lexicon")
    @classmethod
    def _words(cls, v):
        bad = [w for w in v if not w.isalpha()]
        if bad:
            raise ValueError(f"lexicon words must be single words of letters, got {bad[:3]}")
        if not v:
            raise ValueError("the lexicon is empty; give at least one word or drop word_sense from probes.tasks")
        return {w.lower(): e for w, e in v.items()}


def select_word_sense_examples(docs, tokenizer, lexicon: dict, window_words: int, max_per_word: int, max_tokens: int | None,
                               rng: np.random.Generator) -> tuple[list[Doc], int, pd.DataFrame]:
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
    if max_tokens is not None and len(keep) > max_tokens:
        keep = rng.choice(keep, size=max_tokens, replace=False).tolist()
    per_doc: dict[int, list] = {}
    for k in sorted(keep):
        di, did, w, occ = found[k]
        per_doc.setdefault(di, []).append(occ)
    chosen: list[Doc] = []
    for di in sorted(per_doc):
        did, text = texts[di]
        ids, spans = tokenize(tokenizer, text)
        rows = []
        at = tokens_at_chars(spans, [occ.end - 1 for occ in per_doc[di]])
        first = tokens_at_chars(spans, [occ.start for occ in per_doc[di]])
        for occ, p, p0 in zip(per_doc[di], at, first):
            if p < 0:
                continue
            rows.append({"token_index": int(p), "first_token_index": int(p0) if 0 <= p0 <= p else int(p), "word": occ.word,
                         "sense": occ.sense, "cues": " ".join(occ.cues), "_occ": occ})
        # other occurrences of lexicon words in the document are neither task nor 'other' tokens
        others = tokens_at_chars(spans, [m.end() - 1 for m in pattern.finditer(text)])
        ignore = {int(p) for p in others if p >= 0} - {r["token_index"] for r in rows}
        if rows:
            chosen.append(Doc(di, did, text, ids, spans, rows, ignore))
    table = pd.DataFrame([{"word": w, "label": lab, "count": c} for (w, lab), c in sorted(stats.items())],
                         columns=["word", "label", "count"])
    return chosen, n_docs, table


def word_sense_targets(examples: pd.DataFrame, lexicon: dict, min_per_class: int, n_folds: int, balance_resolved: bool,
                       rng: np.random.Generator) -> tuple[list[Target], list[tuple[str, str]]]:
    """Targets that have enough data, and ``(task, reason)`` for those that do not."""
    targets: list[Target] = []
    skipped: list[tuple[str, str]] = []
    words = examples["word"].to_numpy() if len(examples) else np.array([], dtype=object)
    senses = examples["sense"].to_numpy() if len(examples) else np.array([], dtype=object)
    docs = examples["doc_index"].to_numpy() if len(examples) else np.array([], dtype=np.int64)
    for w, entry in lexicon.items():
        names = list(_senses(entry))
        task = f"word_sense/{w}/{_label_kind(entry)}"
        rows = np.flatnonzero(words == w)
        y = (senses[rows] == names[1]).astype(np.float64)
        counts = {names[0]: int((y == 0).sum()), names[1]: int((y == 1).sum())}
        reason = too_few(counts, docs[rows], min_per_class, n_folds)
        if reason:
            skipped.append((task, f"{reason} ('{w}' occurrences in the probe sample: "
                                  f"{', '.join(f'{c} {s}' for s, c in counts.items())})"))
        else:
            targets.append(Target(task, "classification", rows, y, tuple(names), topic_control=True))
    task = "word_sense/resolved"
    if len(examples):
        resolved = examples["resolved"].to_numpy(bool)
        keep: list[int] = []
        for w in sorted(set(words)):
            r = np.flatnonzero((words == w) & resolved)
            u = np.flatnonzero((words == w) & ~resolved)
            if balance_resolved:
                m = min(len(r), len(u))
                keep += rng.choice(r, m, replace=False).tolist() + rng.choice(u, m, replace=False).tolist()
            else:
                keep += r.tolist() + u.tolist()
        rows = np.array(sorted(keep), dtype=np.int64)
        y = resolved[rows].astype(np.float64)
    else:
        rows, y = np.zeros(0, dtype=np.int64), np.zeros(0)
    counts = {"unresolved": int((y == 0).sum()), "resolved": int((y == 1).sum())}
    reason = too_few(counts, docs[rows] if len(rows) else rows, min_per_class, n_folds)
    if reason:
        how = "balanced within each word" if balance_resolved else "pooled over words"
        skipped.append((task, f"{reason} ({how}: {counts['resolved']} resolved, {counts['unresolved']} unresolved)"))
    else:
        targets.append(Target(task, "classification", rows, y, ("unresolved", "resolved"), topic_control=True))
    return targets, skipped


def uncertainty_target(data, targets, probes_cfg, seed: int) -> tuple[list[Target], list[tuple[str, str]]]:
    """``word_sense/uncertainty``: how unsure a later layer is about the word's sense (a model-based target beside the
    text-based ``resolved``).

    For every sense target, an L2 logistic probe on the later layer's residual (``late_acts_ND``) predicts the sense
    out of fold (document-grouped folds, strength by inner CV, as every probe arm); the target is the binary entropy
    (bits) of that prediction, pooled over the words. A token's value comes from a probe that never saw its
    document, so the target is not the probe's own fit.
    """
    from probes.comparison import fit_predict, inner_splits
    from stats import grouped_folds

    task = "word_sense/uncertainty"
    late = getattr(data, "late_acts_ND", None)
    if late is None:
        return [], [(task, "no later layer read (probes.word_sense.uncertainty_offset is null, or the hook is the last layer)")]
    rows, ys = [], []
    docs_all = data.doc_N
    for t in targets:
        if not t.task.endswith("/sense"):
            continue
        docs = docs_all[t.rows]
        try:
            folds = grouped_folds(docs, probes_cfg.folds, seed, t.y)
        except ValueError:
            continue
        inner = inner_splits(docs, t.y, "classification", folds, probes_cfg.inner_folds, seed)
        p = np.clip(fit_predict(late[t.rows].astype(np.float64), t.y, folds, "classification", None,
                                probes_cfg.regularisation, inner).pred, 1e-12, 1 - 1e-12)
        rows.append(np.asarray(t.rows))
        ys.append(-(p * np.log2(p) + (1 - p) * np.log2(1 - p)))
    if not rows:
        return [], [(task, "no word has a sense target to read out at the later layer")]
    r, y = np.concatenate(rows), np.concatenate(ys)
    order = np.argsort(r, kind="stable")
    if len(np.unique(docs_all[r])) < probes_cfg.folds:
        return [], [(task, f"only {len(np.unique(docs_all[r]))} documents for {probes_cfg.folds} folds")]
    return [Target(task, "regression", r[order], y[order], topic_control=True)], []


def _label_kind(entry) -> str:
    """``sense``; ``next_word`` for a word labelled only by what follows it (cue window before it 0, e.g. ``how``):
    a causal model has not read its label yet, so probing it is next-token prediction, and it is named so."""
    before = entry.get("window_before") if isinstance(entry, dict) else entry.window_before
    return "next_word" if before == 0 else "sense"


def _senses(entry) -> dict:
    return entry["senses"] if isinstance(entry, dict) else entry.senses


def _lexicon(probes_cfg) -> dict:
    return {w: e.model_dump() for w, e in probes_cfg.word_sense.lexicon.items()}


class WordSense(Task):
    name = "word_sense"
    noun = "labelled ambiguous-word occurrence"
    spec = WordSenseSpec
    figure_columns = ("word", "sense", "resolved")
    scatter_columns = ("sense", "resolved", "word")

    def select(self, docs, tokenizer, probes_cfg, rng):
        ws = probes_cfg.word_sense
        # bounded by max_per_word per word, not by probes.max_tokens: each sense needs its own examples
        chosen, n, table = select_word_sense_examples(docs, tokenizer, _lexicon(probes_cfg), ws.window_words, ws.max_per_word,
                                                      None, rng)
        return Selection(chosen, n, {"label_counts": table.to_dict(orient="records")})

    def finish(self, examples):
        if len(examples):
            occ = examples.pop("_occ")
            vis = examples["_visible_from"].to_numpy()
            examples["resolved"] = [o.resolved(int(v)) for o, v in zip(occ, vis)]
        return examples

    def targets(self, examples, probes_cfg, rng):
        ws = probes_cfg.word_sense
        return word_sense_targets(examples, _lexicon(probes_cfg), ws.min_per_class, probes_cfg.folds, ws.balance_resolved, rng)

    def late_hook(self, cfg, model):
        off = cfg.probes.word_sense.uncertainty_offset
        if off is None:
            return None
        from sources.config import HookSpec

        last = int(getattr(model, "n_layers", cfg.hook.layer + off + 1)) - 1
        layer = min(cfg.hook.layer + off, last)
        return HookSpec(layer=layer, site="resid_post") if layer > cfg.hook.layer else None

    def model_targets(self, data, targets, probes_cfg, seed):
        return uncertainty_target(data, targets, probes_cfg, seed)

    def reads_out(self, target):
        return target.endswith(("/sense", "/next_word"))  # word_sense/resolved is about the window, not what the model reads

    def panels(self, examples, targets):
        sense_words = {t.task.split("/")[1] for t in targets if t.task.endswith(("/sense", "/next_word"))}
        sense = [f"{w}:{s}" if w in sense_words else None for w, s in zip(examples["word"], examples["sense"])]
        panels = [("sense resolved by the preceding text", np.where(examples["resolved"], "resolved", "unresolved"), "categorical"),
                  ("ambiguous word", examples["word"].to_numpy(), "categorical")]
        if any(s is not None for s in sense):
            panels.append(("sense (words with a sense probe)", np.array(sense, dtype=object), "categorical"))
        return panels

    def hover(self, points):
        return [f"{w}: {s}" for w, s in zip(points.get("word", ""), points.get("sense", ""))]


TASK = WordSense()
