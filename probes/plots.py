"""PCA scatter plots of a latent group on a task's tokens, coloured by the labels (the reference's URL figure)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from probes.result import ProbeFigure  # noqa: E402
from subspaces import reconstruction_pca  # noqa: E402


def group_pca_figure(title: str, latents_NF, W_dec_FD, members, threshold_F, panels,
                     table=None) -> "tuple[dict, ProbeFigure] | None":
    """Scatter of the top-2 PCs of the group-restricted reconstruction on tokens where the group fires.

    ``panels``: list of ``(name, values_N, kind)`` with kind ``continuous`` or ``categorical``;
    values may be None for tokens without a label (not drawn in that panel). Returns a small summary
    (tokens, explained variance) and the :class:`probes.result.ProbeFigure` (PNG bytes), or None when fewer
    than 3 tokens fire. With ``table`` (a DataFrame aligned with the rows of ``latents_NF``: token, labels,
    ...), the figure also holds the plotted rows of it with their coordinates pc1, pc2 (the report's
    interactive view).
    """
    try:
        res = reconstruction_pca(latents_NF, W_dec_FD, members, n_components=2, threshold=threshold_F)
    except ValueError:
        return None
    rows = res.rows_N
    if len(rows) < 3:
        return None
    A = latents_NF[rows][:, list(members)]
    A = A.toarray() if hasattr(A, "toarray") else np.asarray(A)
    recon = A.astype(np.float64) @ np.asarray(W_dec_FD, dtype=np.float64)[list(members)]
    xy = res.scores(recon)
    if xy.shape[1] == 1:
        xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.2), squeeze=False)
        _draw(fig, axes, panels, rows, xy, res.explained_variance_ratio_K)
    fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout costs seconds per figure
    fig.subplots_adjust(left=0.07, right=0.97, bottom=0.13, top=0.86, wspace=0.35)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    pts = None if table is None else table.iloc[rows].reset_index(drop=True).assign(pc1=xy[:, 0], pc2=xy[:, 1])
    info = {"tokens": int(len(rows)), "explained_variance_ratio": [float(x) for x in res.explained_variance_ratio_K]}
    return info, ProbeFigure(buf.getvalue(), pts)


def _draw(fig, axes, panels, rows, xy, ev) -> None:
    for ax, (name, values, kind) in zip(axes[0], panels):
        v = np.asarray(values, dtype=object)[rows]
        has = np.array([x is not None and not (isinstance(x, float) and np.isnan(x)) for x in v])
        ax.scatter(xy[~has, 0], xy[~has, 1], s=6, c="0.85", linewidths=0, label="no label" if (~has).any() else None)
        if kind == "continuous" and has.any():
            vals = v[has].astype(np.float64)
            hi = np.quantile(vals, 0.98) if len(vals) > 10 else vals.max()
            sc = ax.scatter(xy[has, 0], xy[has, 1], s=8, c=np.minimum(vals, hi), cmap="viridis", linewidths=0)
            fig.colorbar(sc, ax=ax, label=name)
        elif has.any():
            cats = sorted(set(str(x) for x in v[has]))
            pal = sns.color_palette("tab10" if len(cats) <= 10 else "tab20", len(cats))
            for c, col in zip(cats, pal):
                sel = has & np.array([str(x) == c for x in v])
                ax.scatter(xy[sel, 0], xy[sel, 1], s=8, color=col, linewidths=0, label=c)
            ax.legend(fontsize=7, markerscale=2, loc="upper right")  # "best" is slow with many points
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"PC1 ({ev[0]:.0%} var)")
        ax.set_ylabel(f"PC2 ({ev[1]:.0%} var)" if len(ev) > 1 else "PC2")
