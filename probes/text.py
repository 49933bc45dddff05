"""Probe labels derived automatically from document text (no model needed).

URL position
    :func:`find_urls` finds URLs with a regular expression; :func:`url_token_targets` maps a URL to the
    tokens that overlap it (via each token's character span) and gives every such token two regression
    targets, measured at the token's last character: characters since the URL started and characters
    since the last ``/`` of the URL (since the URL started if no ``/`` has been read yet).

Word sense
    :func:`label_occurrences` finds whole-word occurrences of each lexicon word and labels each by the
    cue words within a window of words around it in the same document: the sense whose cues occur, or
    no label when cues of both senses or of neither occur (those occurrences are dropped). It records
    the character positions of the own-sense cues *before* the word; an occurrence is "resolved" when
    one of them lies inside the text the model is shown (decided later, once the probe window is known).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# A URL starts with a scheme or www. and runs to whitespace or a delimiter that cannot end a URL in prose
# (quotes, angle/round/square/curly brackets, backticks, pipes, backslashes); trailing sentence punctuation
# is not part of it.
URL_RE = re.compile(r"(?:https?://|www\.)[^\s<>\"'`()\[\]{}|\\^]+", re.IGNORECASE)
_TRAILING = ".,;:!?*"
WORD_RE = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Url:
    start: int
    end: int
    text: str


def find_urls(text: str, min_chars: int = 8) -> list[Url]:
    """URLs in ``text`` (character spans), without trailing punctuation, at least ``min_chars`` long."""
    out = []
    for m in URL_RE.finditer(text):
        s, e = m.start(), m.end()
        while e > s and text[e - 1] in _TRAILING:
            e -= 1
        if e - s >= min_chars:
            out.append(Url(s, e, text[s:e]))
    return out


@dataclass(frozen=True)
class UrlTokens:
    positions: np.ndarray
    """Token indices (into the spans array) that overlap the URL."""
    since_start: np.ndarray
    """Characters from the URL's first character to the token's last character within the URL."""
    since_slash: np.ndarray
    """Characters after the last '/' of the URL read so far (since the start if none)."""


def url_token_targets(spans_L2: np.ndarray, url: Url, text: str) -> UrlTokens:
    """Tokens overlapping ``url`` and their position targets (see the module docstring)."""
    spans = np.asarray(spans_L2)
    s, e = spans[:, 0], spans[:, 1]
    inside = (s >= 0) & (e > url.start) & (s < url.end) & (e > s)
    pos = np.flatnonzero(inside)
    since_start = np.empty(len(pos), dtype=np.int64)
    since_slash = np.empty(len(pos), dtype=np.int64)
    for j, p in enumerate(pos):
        end = min(int(e[p]), url.end)
        since_start[j] = end - url.start
        slash = text.rfind("/", url.start, end)
        since_slash[j] = end - (slash + 1) if slash >= 0 else end - url.start
    return UrlTokens(pos, since_start, since_slash)


@dataclass(frozen=True)
class Occurrence:
    word: str
    start: int
    end: int
    sense: str | None
    """The labelled sense, or None (dropped)."""
    status: str
    """labelled | no_cue | both_senses | excluded"""
    cues: tuple[str, ...]
    """The cue words found (any sense)."""
    own_cue_starts_before: tuple[int, ...]
    """Character starts of cue words of the labelled sense that occur before the word."""

    def resolved(self, visible_from: int = 0) -> bool:
        """Whether an own-sense cue occurs before the word at or after character ``visible_from``."""
        return any(c >= visible_from for c in self.own_cue_starts_before)


def label_occurrences(text: str, lexicon: dict, window_words: int = 15) -> list[Occurrence]:
    """Every whole-word occurrence of a lexicon word in ``text`` with its sense label.

    ``lexicon`` maps word -> object/dict with ``senses`` (sense -> cue words), ``exclude`` (phrases) and
    optional ``window_before``/``window_after`` (words; default ``window_words``). Words are runs of
    ASCII letters, compared lowercased. Only the text around each occurrence is split into words, so
    long documents cost little.
    """
    if not lexicon:
        return []
    out = []
    for m in lexicon_regex(lexicon).finditer(text):
        w, ws, we = m.group(0).lower(), m.start(), m.end()
        entry = lexicon[w]
        senses = _get(entry, "senses")
        excl = [p.lower().split() for p in (_get(entry, "exclude") or [])]
        before = _get(entry, "window_before")
        after = _get(entry, "window_after")
        before = window_words if before is None else before
        after = window_words if after is None else after
        reach = max([before, after] + [len(p) for p in excl])
        left = _words_before(text, ws, reach)
        right = _words_after(text, we, reach)
        if _in_phrase([x for x, _ in left] + [w] + [x for x, _ in right], len(left), w, excl):
            out.append(Occurrence(w, ws, we, None, "excluded", (), ()))
            continue
        ctx_before = left[len(left) - before:] if before else []
        ctx_after = right[:after]
        found: dict[str, list[int]] = {}
        cues = []
        for word, start in ctx_before + ctx_after:
            for sense, cue_words in senses.items():
                if word in cue_words:
                    found.setdefault(sense, []).append(start)
                    cues.append(word)
        if len(found) == 1:
            sense, starts = next(iter(found.items()))
            out.append(Occurrence(w, ws, we, sense, "labelled", tuple(cues), tuple(c for c in starts if c < ws)))
        else:
            out.append(Occurrence(w, ws, we, None, "no_cue" if not found else "both_senses", tuple(cues), ()))
    return out


def _words_before(text: str, pos: int, n: int) -> list[tuple[str, int]]:
    """The last ``n`` words (lowercased, with their start) ending before character ``pos``."""
    if n <= 0:
        return []
    span = 16 * (n + 1)
    while True:
        start = max(0, pos - span)
        found = [(m.group(0).lower(), m.start() + start) for m in WORD_RE.finditer(text, start, pos)]
        if found and found[0][1] == start and start > 0 and text[start - 1].isascii() and text[start - 1].isalpha():
            found = found[1:]  # the slice cut this word in two
        if len(found) >= n or start == 0:
            return found[-n:]
        span *= 4


def _words_after(text: str, pos: int, n: int) -> list[tuple[str, int]]:
    """The first ``n`` words (lowercased, with their start) starting at or after character ``pos``."""
    if n <= 0:
        return []
    span = 16 * (n + 1)
    while True:
        end = min(len(text), pos + span)
        found = [(m.group(0).lower(), m.start()) for m in WORD_RE.finditer(text, pos, end)]
        if found and found[-1][1] + len(found[-1][0]) == end and end < len(text) and text[end].isascii() and text[end].isalpha():
            found = found[:-1]  # the slice cut this word in two
        if len(found) >= n or end == len(text):
            return found[:n]
        span *= 4


def _get(entry, key):
    return entry.get(key) if isinstance(entry, dict) else getattr(entry, key)


def _in_phrase(lower: list[str], i: int, word: str, phrases) -> bool:
    for parts in phrases:
        for t, part in enumerate(parts):
            if part == word and i - t >= 0 and lower[i - t:i - t + len(parts)] == parts:
                return True
    return False


def lexicon_regex(words) -> re.Pattern:
    """Case-insensitive whole-word pattern matching any of ``words`` (a cheap document pre-filter)."""
    alt = "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z])(?:{alt})(?![A-Za-z])", re.IGNORECASE)


def token_at_char(spans_L2: np.ndarray, char: int) -> int | None:
    """Index of the token whose span contains character ``char`` (None if no token does)."""
    hit = tokens_at_chars(spans_L2, np.array([char]))[0]
    return None if hit < 0 else int(hit)


def tokens_at_chars(spans_L2: np.ndarray, chars) -> np.ndarray:
    """For each character position, the index of the token whose span contains it, or -1.

    Binary search over the token ends (offsets of a tokenised document are ordered).
    """
    spans = np.asarray(spans_L2)
    chars = np.asarray(chars, dtype=np.int64)
    if len(spans) == 0:
        return np.full(len(chars), -1, dtype=np.int64)
    ends = np.maximum.accumulate(spans[:, 1])
    idx = np.searchsorted(ends, chars, side="right")
    ok = idx < len(spans)
    idx_c = np.minimum(idx, len(spans) - 1)
    ok &= (spans[idx_c, 0] <= chars) & (spans[idx_c, 1] > chars)
    return np.where(ok, idx_c, -1)
