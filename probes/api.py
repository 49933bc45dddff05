"""Probe any labelled tokens from a notebook (see docs/api.md): a group's subspace against single latents,
sparse probes and matched controls, with document-grouped folds and document-bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from probes.comparison import COLUMNS, Settings, Target, evaluate_target, finalize


def probe(acts_ND, latents_NF, labels_N, docs_N, groups: dict, W_dec_FD, counts_F=None, *, kind: str | None = None,
          task: str = "probe", settings: Settings | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """Tidy results (docs/probes.md's columns) of probing ``labels_N`` with every group of ``groups`` (id -> latents).

    ``acts_ND``: residual activations at the labelled tokens; ``latents_NF``: their SAE latents (dense or scipy
    sparse); ``docs_N``: each token's document (folds and bootstrap resample documents); ``W_dec_FD``: the decoder as
    the SAE applies it (``SAEView.decoder_np()``); ``counts_F``: firing counts used to match control groups on
    frequency (default: counted on ``latents_NF``). ``kind``: regression or classification (default: classification
    for two distinct labels, else regression). Comparisons are BH-corrected together at ``alpha``.
    """
    y = np.asarray(labels_N, dtype=np.float64)
    if kind is None:
        kind = "classification" if len(np.unique(y)) == 2 else "regression"
    if kind == "classification":
        y = (y == np.unique(y).max()).astype(np.float64)
    if counts_F is None:
        nz = latents_NF != 0
        counts_F = np.asarray(nz.sum(0)).ravel()
    target = Target(task, kind, np.arange(len(y)), y)
    rows = evaluate_target(target, acts_ND, latents_NF, np.asarray(docs_N), groups, W_dec_FD, counts_F, settings or Settings())
    return finalize(pd.DataFrame(rows, columns=COLUMNS), alpha)
