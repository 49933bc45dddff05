"""Probe targets from a task family's examples, and honest reasons when a target cannot be probed.

url_position  -> ``url_position/since_start`` and ``url_position/since_slash`` (regression, all URL tokens)
word_sense    -> ``word_sense/<word>/sense`` for every lexicon word (binary: its two senses), and
                 ``word_sense/resolved`` (binary: an own-sense cue precedes the word inside the window),
                 pooled over words and, with ``balance_resolved``, balanced within each word.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from probes.comparison import Target


def url_targets(examples: pd.DataFrame) -> tuple[list[Target], list[tuple[str, str]]]:
    rows = np.arange(len(examples))
    out = [Target("url_position/since_start", "regression", rows, examples["since_start"].to_numpy(np.float64)),
           Target("url_position/since_slash", "regression", rows, examples["since_slash"].to_numpy(np.float64))]
    return out, []


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
        task = f"word_sense/{w}/sense"
        rows = np.flatnonzero(words == w)
        y = (senses[rows] == names[1]).astype(np.float64)
        counts = {names[0]: int((y == 0).sum()), names[1]: int((y == 1).sum())}
        reason = _too_few(counts, docs[rows], min_per_class, n_folds)
        if reason:
            skipped.append((task, f"{reason} ('{w}' occurrences in the probe sample: "
                                  f"{', '.join(f'{c} {s}' for s, c in counts.items())})"))
        else:
            targets.append(Target(task, "classification", rows, y, tuple(names)))
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
    reason = _too_few(counts, docs[rows] if len(rows) else rows, min_per_class, n_folds)
    if reason:
        how = "balanced within each word" if balance_resolved else "pooled over words"
        skipped.append((task, f"{reason} ({how}: {counts['resolved']} resolved, {counts['unresolved']} unresolved)"))
    else:
        targets.append(Target(task, "classification", rows, y, ("unresolved", "resolved")))
    return targets, skipped


def _senses(entry) -> dict:
    return entry["senses"] if isinstance(entry, dict) else entry.senses


def _too_few(counts: dict[str, int], docs, min_per_class: int, n_folds: int) -> str:
    low = [f"{c} {s}" for s, c in counts.items() if c < min_per_class]
    if low:
        return f"too few examples: {', '.join(low)} (need {min_per_class} of each class)"
    if len(np.unique(docs)) < n_folds:
        return f"only {len(np.unique(docs))} documents for {n_folds} document-grouped folds"
    return ""
