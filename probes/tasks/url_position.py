"""URL position: for every token inside a URL, how many characters since the URL started and since its last '/'.

Targets (regression, all URL tokens): ``url_position/since_start`` and ``url_position/since_slash``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field

from probes.comparison import Target
from probes.documents import Doc, tokenize
from probes.tasks.base import Selection, Task
from probes.text import find_urls, url_token_targets
from sources.config import Section


class UrlPositionSpec(Section):
    max_urls_per_doc: int = Field(2, ge=1)
    """At most this many URLs per document (drawn at random), so that examples spread over many documents."""


def select_url_examples(docs, tokenizer, max_tokens: int, max_urls_per_doc: int, rng: np.random.Generator) -> tuple[list[Doc], int]:
    """Random documents with URLs, up to ``max_urls_per_doc`` random URLs each, until ``max_tokens`` URL tokens."""
    cands = [(di, did, text, urls) for di, did, text in docs if (urls := find_urls(text))]
    order = rng.permutation(len(cands))
    chosen: list[Doc] = []
    total = 0
    for k in order:
        if total >= max_tokens:
            break
        di, did, text, urls = cands[k]
        pick = sorted(rng.choice(len(urls), size=min(max_urls_per_doc, len(urls)), replace=False).tolist())
        ids, spans = tokenize(tokenizer, text)
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
            chosen.append(Doc(di, did, text, ids, spans, rows, ignore))
    return chosen, len(cands)


def url_targets(examples: pd.DataFrame) -> tuple[list[Target], list[tuple[str, str]]]:
    rows = np.arange(len(examples))
    out = [Target("url_position/since_start", "regression", rows, examples["since_start"].to_numpy(np.float64)),
           Target("url_position/since_slash", "regression", rows, examples["since_slash"].to_numpy(np.float64))]
    return out, []


class UrlPosition(Task):
    name = "url_position"
    noun = "URL"
    spec = UrlPositionSpec
    figure_columns = ("url", "since_start", "since_slash")
    scatter_columns = ("since_start", "since_slash")

    def select(self, docs, tokenizer, probes_cfg, rng):
        chosen, n = select_url_examples(docs, tokenizer, probes_cfg.max_tokens, probes_cfg.url_position.max_urls_per_doc, rng)
        return Selection(chosen, n)

    def targets(self, examples, probes_cfg, rng):
        return url_targets(examples)

    def panels(self, examples, targets):
        return [("characters since the URL started", examples["since_start"].to_numpy(), "continuous"),
                ("characters since the last '/'", examples["since_slash"].to_numpy(), "continuous")]

    def hover(self, points):
        return [f"{t} in {u}" for t, u in zip(points.get("token", ""), points.get("url", ""))]


TASK = UrlPosition()
