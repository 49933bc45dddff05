"""Choosing which groups to probe: those enriched on a task's tokens.

A group *fires* on a token when any member's activation exceeds the co-occurrence stage's firing
threshold. Enrichment compares its firing rate on the task tokens with its rate on the other tokens
of the same probe windows (the text around the task tokens)::

    enrichment = (task_fires / n_task) / ((other_fires + 1) / (n_other + 1))

The add-one in the baseline keeps groups that never fire elsewhere finite. Groups firing on fewer than
``min_count`` task tokens, or outside the size range, are not eligible; the ``n_groups`` most enriched
eligible groups are probed (ties: more task firings first, then lower group id). Selection never sees
the labels, only which tokens belong to the task, so it cannot favour a group on the probe's outcome.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def enrichment_table(group_ids, sizes, task_fires_G, other_fires_G, n_task: int, n_other: int) -> pd.DataFrame:
    """One row per group: size, task/other firing counts and rates, enrichment."""
    task = np.asarray(task_fires_G, dtype=np.float64)
    other = np.asarray(other_fires_G, dtype=np.float64)
    df = pd.DataFrame({
        "group_id": list(group_ids),
        "group_size": np.asarray(sizes, dtype=np.int64),
        "task_fires": task.astype(np.int64),
        "other_fires": other.astype(np.int64),
        "task_rate": task / max(n_task, 1),
        "other_rate": other / max(n_other, 1),
    })
    df["enrichment"] = df["task_rate"] / ((other + 1.0) / (n_other + 1.0))
    return df


def select_groups(table: pd.DataFrame, n_groups: int, min_count: int, min_size: int, max_size: int) -> pd.DataFrame:
    """The rows of ``table`` that are probed, most enriched first."""
    ok = table[(table["task_fires"] >= min_count) & (table["group_size"] >= min_size) & (table["group_size"] <= max_size)]
    ok = ok.sort_values(["enrichment", "task_fires", "group_id"], ascending=[False, False, True], kind="stable")
    return ok.head(n_groups).reset_index(drop=True)
