"""Quotation: whether a token lies inside a double-quoted span of the text, and how far into it.

Examples are found automatically in the corpus text. A quoted span is a pair of straight (``"..."``) or curly
(``“...”``) double quotes on one line, 2 to ``max_chars`` characters apart with a letter between them; a straight
opening quote must not follow a letter or digit and a straight closing quote must not be followed by one (so
``12"`` or ``a"b`` never open a span). In a
seeded sample of documents, up to ``max_spans_per_doc`` spans each:

- *inside* tokens: tokens lying wholly between the two quotes;
- *outside* tokens: as many tokens (at most) drawn from the ``context_tokens`` tokens before the opening quote and
  after the closing quote, outside every quoted span of the document;
- tokens holding a quote mark, the tokens of spans not chosen, and any token that some pairing of its line's quote
  marks could put inside quotes (a span too long to take, an unpaired mark) are neither (enrichment ignores them).

Targets: ``quotation/inside`` (binary: inside vs outside) and ``quotation/since_open`` (regression over the
inside tokens: characters since the opening quote, at the token's last character). Only inside tokens whose opening
quote lies inside the probe window count (the model must be able to see it); the column ``open_visible`` says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from pydantic import Field

from probes.comparison import Target
from probes.documents import Doc, tokenize
from probes.tasks.base import Selection, Task, too_few
from sources.config import Section


class QuotationSpec(Section):
    max_spans_per_doc: int = Field(2, ge=1)
    """At most this many quoted spans per document (drawn at random), so that examples spread over many documents."""
    max_chars: int = Field(120, ge=2)
    """Longest quoted span (characters between the quotes) taken; longer pairs of quotes are not spans."""
    context_tokens: int = Field(16, ge=1)
    """Outside tokens are drawn from this many tokens before the opening and after the closing quote."""
    min_per_class: int = Field(20, ge=2)
    """quotation/inside needs at least this many inside and outside tokens, else it is skipped with a reason."""


@dataclass(frozen=True)
class Quote:
    open: int
    """Character index of the opening quote."""
    close: int
    """Character index of the closing quote."""


def find_quotes(text: str, max_chars: int = 120) -> list[Quote]:
    """Double-quoted spans of ``text`` (see the module docstring), left to right, non-overlapping."""
    pattern = re.compile(r'(?<![\w"])"([^"\n]{2,%d})"(?![\w"])|“([^“”\n]{2,%d})”' % (max_chars, max_chars))
    out = []
    for m in pattern.finditer(text):
        body = m.group(1) if m.group(1) is not None else m.group(2)
        if body.strip() and any(c.isalpha() for c in body):
            out.append(Quote(m.start(), m.end() - 1))
    return out


QUOTE_MARKS = '"“”'


def maybe_quoted(text: str) -> np.ndarray:
    """Bool per character: a quote mark, or text that any pairing of the quote marks of its line could put inside
    quotes (marks paired left to right per line, whatever their kind or distance; after an unpaired mark, the rest
    of the line). Outside examples are drawn only from characters where this is False."""
    mask = np.zeros(len(text) + 1, dtype=bool)
    start = 0
    for line in text.split("\n"):
        marks = [start + i for i, c in enumerate(line) if c in QUOTE_MARKS]
        for a, b in zip(marks[::2], marks[1::2] + [start + len(line)]):
            mask[a:b + 1] = True
        start += len(line) + 1
    return mask[:len(text)]


def select_quotation_examples(docs, tokenizer, spec: QuotationSpec, max_tokens: int, rng: np.random.Generator) -> tuple[list[Doc], int]:
    """Random documents with quoted spans, up to ``max_spans_per_doc`` random spans each, until ``max_tokens`` tokens."""
    cands = [(di, did, text, q) for di, did, text in docs if (q := find_quotes(text, spec.max_chars))]
    order = rng.permutation(len(cands))
    chosen: list[Doc] = []
    total = 0
    for k in order:
        if total >= max_tokens:
            break
        di, did, text, quotes = cands[k]
        ids, spans = tokenize(tokenizer, text)
        start, end = spans[:, 0], spans[:, 1]
        unsure = np.concatenate([[0], np.cumsum(maybe_quoted(text))])
        quoted = unsure[end] - unsure[start] > 0  # may lie inside quotes, or holds a quote mark
        for q in quotes:
            quoted |= (end > q.open) & (start <= q.close)
        marks = np.concatenate([[0], np.cumsum([c in QUOTE_MARKS for c in text])])
        holds_mark = marks[end] - marks[start] > 0
        pick = set(rng.choice(len(quotes), size=min(spec.max_spans_per_doc, len(quotes)), replace=False).tolist())
        rows: list[dict] = []
        for qi, q in enumerate(quotes):
            if qi not in pick or total >= max_tokens:
                continue
            inside = np.flatnonzero((start > q.open) & (end <= q.close) & (end > start) & ~holds_mark)
            if not len(inside):
                continue
            first = int(np.flatnonzero(end > q.open)[0])
            last = int(np.flatnonzero(start <= q.close)[-1])
            near = np.r_[max(0, first - spec.context_tokens):first, last + 1:min(len(ids), last + 1 + spec.context_tokens)]
            near = near[~quoted[near] & (end[near] > start[near])]
            outside = np.sort(rng.choice(near, size=min(len(near), len(inside)), replace=False)) if len(near) else near
            for p in inside:
                rows.append({"token_index": int(p), "inside": True, "since_open": int(end[p] - 1 - q.open),
                             "quote_start": q.open})
            for p in outside:
                rows.append({"token_index": int(p), "inside": False, "since_open": -1, "quote_start": q.open})
            total += len(inside) + len(outside)
        taken = {r["token_index"] for r in rows}
        ignore = {int(p) for p in np.flatnonzero(quoted)} - taken
        if rows:
            rows.sort(key=lambda r: r["token_index"])
            uniq = {r["token_index"]: r for r in rows}  # an outside token near two spans is one example
            chosen.append(Doc(di, did, text, ids, spans, list(uniq.values()), ignore))
    return chosen, len(cands)


class Quotation(Task):
    name = "quotation"
    noun = "double-quoted span"
    spec = QuotationSpec
    figure_columns = ("inside", "since_open", "open_visible")
    scatter_columns = ("inside", "since_open")

    def select(self, docs, tokenizer, probes_cfg, rng):
        chosen, n = select_quotation_examples(docs, tokenizer, probes_cfg.quotation, probes_cfg.max_tokens, rng)
        return Selection(chosen, n)

    def finish(self, examples):
        if len(examples):
            examples["open_visible"] = ~examples["inside"].to_numpy(bool) | (
                examples["quote_start"].to_numpy(np.int64) >= examples["_visible_from"].to_numpy(np.int64))
        return examples

    def targets(self, examples, probes_cfg, rng):
        if not len(examples):
            return [], [("quotation/inside", "no examples"), ("quotation/since_open", "no examples")]
        inside = examples["inside"].to_numpy(bool)
        ok = examples["open_visible"].to_numpy(bool)
        docs = examples["doc_index"].to_numpy()
        targets, skipped = [], []
        rows = np.flatnonzero(ok)
        y = inside[rows].astype(np.float64)
        counts = {"outside": int((y == 0).sum()), "inside": int((y == 1).sum())}
        reason = too_few(counts, docs[rows], probes_cfg.quotation.min_per_class, probes_cfg.folds)
        if reason:
            skipped.append(("quotation/inside", reason))
        else:
            targets.append(Target("quotation/inside", "classification", rows, y, ("outside", "inside")))
        rows = np.flatnonzero(ok & inside)
        reason = too_few({"inside": len(rows)}, docs[rows], probes_cfg.quotation.min_per_class, probes_cfg.folds)
        if reason:
            skipped.append(("quotation/since_open", reason))
        else:
            targets.append(Target("quotation/since_open", "regression", rows,
                                  examples["since_open"].to_numpy(np.float64)[rows]))
        return targets, skipped

    def panels(self, examples, targets):
        since = np.where(examples["inside"].to_numpy(bool), examples["since_open"].to_numpy(np.float64), np.nan)
        return [("inside a double-quoted span", np.where(examples["inside"], "inside", "outside"), "categorical"),
                ("characters since the opening quote", since, "continuous")]

    def hover(self, points):
        return [f"{t} ({'inside' if bool(i) else 'outside'} quotes)"
                for t, i in zip(points.get("token", ""), points.get("inside", False))]


TASK = Quotation()
