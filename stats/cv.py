"""Cross-validation folds grouped by source document: no document is ever on both sides of a split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold


def grouped_folds(groups_N, n_folds: int, seed: int = 0, stratify_N=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_idx, test_idx), ...]`` with whole groups (documents) on one side only.

    With ``stratify_N`` (class labels) folds also keep class proportions as far as the groups allow
    (``StratifiedGroupKFold``); otherwise ``GroupKFold``. Both shuffle with ``seed``.
    Raises ``ValueError`` when there are fewer groups than folds.
    """
    groups = np.asarray(groups_N)
    n_groups = len(np.unique(groups))
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if n_groups < n_folds:
        raise ValueError(f"only {n_groups} documents for {n_folds} folds")
    X = np.zeros((len(groups), 1))
    if stratify_N is not None:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(X, np.asarray(stratify_N), groups)
    else:
        splitter = GroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(X, None, groups)
    return [(np.asarray(tr), np.asarray(te)) for tr, te in splits]
