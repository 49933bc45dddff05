"""URL position: for every token inside a URL, how many characters since the URL started and since its last '/'.

Targets (regression, all URL tokens): ``url_position/since_start`` and ``url_position/since_slash``.
"""

from __future__ import annotations

import re

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
            for j, (p, a, b) in enumerate(zip(t.positions, t.since_start, t.since_slash)):
                rows.append({"token_index": int(p), "url": u.text, "url_start": u.start, "url_template": url_template(u.text),
                             "url_index": j, "since_start": int(a), "since_slash": int(b)})
            total += len(t.positions)
        taken = {r["token_index"] for r in rows}
        ignore -= taken
        if rows:
            chosen.append(Doc(di, did, text, ids, spans, rows, ignore))
    return chosen, len(cands)


def url_template(url: str) -> str:
    """A URL with its query and fragment dropped and every run of digits written as 0: URLs of one template (the
    same API path with other ids, say) share it, and the probes never train on a template they are tested on."""
    base = re.split(r"[?#]", url, maxsplit=1)[0]
    return re.sub(r"\d+", "0", base.rstrip("/"))


MAX_INDEX = 64
"""Baseline features: token index within the URL and position in the window are one-hot, capped at this."""


def _one_hot(values, cap: int | None = None) -> np.ndarray:
    v = np.asarray(values)
    if cap is not None:
        v = np.minimum(v.astype(np.int64), cap)
    _, inv = np.unique(v, return_inverse=True)
    out = np.zeros((len(v), int(inv.max()) + 1 if len(v) else 0))
    out[np.arange(len(v)), inv] = 1.0
    return out


def url_baselines(examples: pd.DataFrame) -> dict[str, np.ndarray]:
    """What predicts a URL token's position without the model: its position in the probe window (one-hot), its index
    among the URL's tokens (one-hot) and its identity (one-hot over the token strings of the sample)."""
    position = examples["token_index"].to_numpy(np.int64) - examples["window_start"].to_numpy(np.int64) + 1
    return {"position": _one_hot(position, MAX_INDEX * 2), "url_index": _one_hot(examples["url_index"], MAX_INDEX),
            "token": _one_hot(examples["token"].astype(str).to_numpy())}


def template_components(docs_N: np.ndarray, templates_N: np.ndarray) -> np.ndarray:
    """Per row, its connected component in the graph linking each document to the URL templates it holds: documents
    sharing a template are not independent, so folds keep a component together and the bootstrap resamples
    components (no template is then ever on both sides of a split)."""
    import networkx as nx

    g = nx.Graph()
    for d, t in zip(docs_N.tolist(), templates_N.tolist()):
        g.add_edge(("doc", d), ("url", t))
    comp = {node: c for c, nodes in enumerate(sorted(nx.connected_components(g), key=min)) for node in nodes}
    return np.array([comp[("doc", d)] for d in docs_N.tolist()], dtype=np.int64)


def url_targets(examples: pd.DataFrame) -> tuple[list[Target], list[tuple[str, str]]]:
    rows = np.arange(len(examples))
    have = {"url_index", "window_start", "token", "url_template"} <= set(examples.columns)
    base = url_baselines(examples) if have else {}
    clusters = template_components(examples["doc_index"].to_numpy(), examples["url_template"].astype(str).to_numpy()) \
        if have else None
    out = [Target(f"url_position/{name}", "regression", rows, examples[name].to_numpy(np.float64), baselines=base,
                  clusters=clusters) for name in ("since_start", "since_slash")]
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
