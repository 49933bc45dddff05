"""Multiple-comparison correction: Benjamini-Hochberg, the framework's only implementation.

Every family of the framework is corrected here: co-occurring pairs (cooc.scoring, whose family counts
pairs it never stored), probe comparisons and intervention effects.
"""

from __future__ import annotations

import numpy as np
from statsmodels.stats.multitest import multipletests


def bh_adjust(p_values, m: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values; NaN entries stay NaN and are not counted.

    ``m``: the family size when it is larger than the finite p-values given. The ``m - n`` members not
    given are taken to have p = 1 (they rank last; their own adjusted values would be 1), which is what
    BH on the padded vector gives without building it (a co-occurrence family has K(K-1)/2 pairs, most
    never stored). Without ``m`` this is statsmodels' ``fdr_bh``; with ``m`` it is the same step-up written
    out, ``min(1, min_{j >= i} p_(j) m / j)`` (the co-occurrence stage's arithmetic, bit for bit whatever the
    family's size), checked against statsmodels on the padded vector in the tests.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    n = int(ok.sum())
    explicit = m is not None
    m = n if m is None else int(m)
    if m < n:
        raise ValueError(f"family size m={m} is smaller than the {n} p-values given")
    if not n:
        return out
    q = p[ok]
    if ((q < 0) | (q > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    if not explicit:
        out[ok] = multipletests(q, method="fdr_bh")[1]
        return out
    order = np.argsort(q, kind="stable")
    raw = q[order] * m / np.arange(1, n + 1)
    adj = np.minimum(np.minimum.accumulate(raw[::-1])[::-1], 1.0)
    res = np.empty(n)
    res[order] = adj
    out[ok] = res
    return out
