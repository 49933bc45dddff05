"""Replication of the discovery edges on held-out documents.

Groups are found on the discovery part of the documents (data.heldout_fraction). Every edge is then re-tested on
the held-out part under the same null: its count there against its expectation there (cooc.scoring.pair_stats,
with the held-out documents' own per-document counts for the document null), with Benjamini-Hochberg over the
family of discovery edges at cooc.alpha. An edge *replicates* when it is significant there; a group's
``replication_rate`` is the share of its internal edges (discovery edges between two of its members) that
replicate. Nothing found on the discovery part is used to choose what is tested on the held-out part beyond the
edges themselves, so the held-out test is a clean one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cooc.counting import CooccurrenceCounter
from cooc.documents import document_expected
from cooc.groups import internal_edges
from cooc.scoring import pair_stats
from stats.multiple import bh_adjust

EDGE_COLUMNS = ["heldout_count", "heldout_expected", "heldout_p_adj", "replicated"]
"""Columns replication adds to the pairs table (NaN / False on pairs that are not edges)."""


def retest(i: np.ndarray, j: np.ndarray, heldout: CooccurrenceCounter, test: str, alpha: float) -> pd.DataFrame:
    """EDGE_COLUMNS for pairs (i, j) on the held-out counter: count, expectation and BH-adjusted p-value over
    these pairs, and whether the pair is significant at ``alpha``."""
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    c = heldout.lookup(i, j)
    N = max(int(heldout.n_tokens_), 1)
    e_doc = None
    if test == "document":
        e_doc = (document_expected(*heldout.docs_.matrix(), i, j) if heldout.docs_ is not None and len(i)
                 else np.zeros(len(i)))
    with np.errstate(divide="ignore", invalid="ignore"):
        st = pair_stats(c, heldout.occ_F[i], heldout.occ_F[j], N, test, e_doc)
    p = np.where(c > 0, np.nan_to_num(st["p_value"], nan=1.0), 1.0)
    p_adj = bh_adjust(p, len(p)) if len(p) else p
    return pd.DataFrame({"heldout_count": c, "heldout_expected": st["expected"], "heldout_p_adj": p_adj,
                         "replicated": (p_adj < alpha) & (c > 0)})


def group_replication(table: pd.DataFrame, i: np.ndarray, j: np.ndarray, replicated: np.ndarray) -> pd.DataFrame:
    """Per group id: ``replication_edges`` (its internal edges that replicate), ``replication_tested`` (its
    internal edges) and ``replication_rate`` (their ratio)."""
    g = internal_edges(table, i, j)
    inside = g != None  # noqa: E711 - elementwise on an object array
    frame = pd.DataFrame({"group_id": g[inside], "replicated": np.asarray(replicated, dtype=bool)[inside]})
    agg = frame.groupby("group_id")["replicated"].agg(["sum", "size"])
    out = pd.DataFrame({"group_id": table["group_id"].unique()}).set_index("group_id")
    out["replication_edges"] = agg["sum"].reindex(out.index).fillna(0).astype(np.int64)
    out["replication_tested"] = agg["size"].reindex(out.index).fillna(0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["replication_rate"] = out["replication_edges"] / out["replication_tested"].where(out["replication_tested"] > 0)
    return out.reset_index()


def summary(edges: pd.DataFrame, groups: pd.DataFrame, heldout: CooccurrenceCounter, test: str) -> dict:
    """The manifest's ``replication`` entry."""
    rate = groups.drop_duplicates("group_id")["replication_rate"].dropna()
    return {"null": test, "heldout_tokens": int(heldout.n_tokens_), "heldout_documents": heldout.spread_.summary(),
            "edges_tested": int(len(edges)), "edges_replicated": int(edges["replicated"].sum()),
            "edge_replication_rate": round(float(edges["replicated"].mean()), 4) if len(edges) else None,
            "group_replication_rate_median": round(float(rate.median()), 4) if len(rate) else None,
            "groups_replicating_half": int((rate >= 0.5).sum()), "groups": int(len(rate))}
