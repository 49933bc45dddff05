"""Static figures of the report (seaborn/matplotlib), each saved as ``OUT/figures/<name>.png``.

Every function takes tidy frames read from the run folder and returns the PNG path, or None when
there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from sources.files import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, "out") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def group_sizes(groups_df: pd.DataFrame, path: Path) -> Path | None:
    """Histogram of group sizes (log-spaced bins), stacked by structure label."""
    if groups_df.empty:
        return None
    per = groups_df.groupby("group_id").agg(size=("latent", "size"), structure=("structure", "first")).reset_index()
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, ax = plt.subplots(figsize=(6.0, 3.4))
        bins = np.unique(np.round(np.logspace(np.log10(2), np.log10(max(3, per["size"].max()) + 1), 14)).astype(int))
        sns.histplot(per, x="size", hue="structure", multiple="stack", bins=bins, ax=ax, palette="Set2")
        ax.set_xscale("log")
        ax.set_xlabel("group size (latents)")
        ax.set_ylabel("groups")
        ax.set_title(f"{len(per)} groups, {int(per['size'].sum())} latents", fontsize=9)
        fig.subplots_adjust(left=0.11, right=0.97, bottom=0.16, top=0.9)
    return _save(fig, path)


def npmi_cut(pairs: pd.DataFrame, min_npmi: float | None, path: Path) -> Path | None:
    """NPMI of every scored pair, edges (significant and above the NPMI floor) against the rest."""
    if pairs.empty or "npmi" not in pairs:
        return None
    df = pd.DataFrame({"npmi": pairs["npmi"].astype(float),
                       "pair": np.where(pairs["edge"].astype(bool), "edge", "not an edge")})
    df = df[np.isfinite(df["npmi"])]
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig, ax = plt.subplots(figsize=(6.0, 3.4))
        sns.histplot(df, x="npmi", hue="pair", bins=60, ax=ax, element="step", stat="count",
                     hue_order=["not an edge", "edge"], palette=["0.6", "C3"])
        ax.set_yscale("log")
        if min_npmi is not None:
            ax.axvline(min_npmi, color="k", ls="--", lw=1)
            ax.text(min_npmi, ax.get_ylim()[1] * 0.5, f" NPMI floor {min_npmi:g}", fontsize=7, va="top")
        ax.set_xlabel("normalised PMI of the pair")
        ax.set_ylabel("scored pairs")
        fig.subplots_adjust(left=0.11, right=0.97, bottom=0.16, top=0.95)
    return _save(fig, path)


def forest(rows: pd.DataFrame, label: str, path: Path, title: str, xlabel: str) -> Path | None:
    """Point estimates with confidence intervals, one row per entry of ``rows[label]``; a dashed zero line.

    ``rows`` needs columns estimate, ci_low, ci_high and a boolean ``win`` (filled markers)."""
    rows = rows.dropna(subset=["estimate"])
    if rows.empty:
        return None
    rows = rows.iloc[::-1]
    y = np.arange(len(rows))
    win = rows["win"].fillna(False).astype(bool).to_numpy() if "win" in rows else np.zeros(len(rows), bool)
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        height = 1.2 + 0.28 * len(rows)
        fig, ax = plt.subplots(figsize=(7.2, height))
        lo = rows["estimate"] - rows["ci_low"]
        hi = rows["ci_high"] - rows["estimate"]
        ax.errorbar(rows["estimate"], y, xerr=[lo.clip(lower=0).fillna(0), hi.clip(lower=0).fillna(0)], fmt="none",
                    ecolor="0.4", elinewidth=1, capsize=2)
        ax.scatter(rows["estimate"][win], y[win], color="C2", zorder=3, s=22, label="significant win")
        ax.scatter(rows["estimate"][~win], y[~win], facecolor="white", edgecolor="C0", zorder=3, s=22, label="no win")
        ax.axvline(0, color="k", ls="--", lw=0.8)
        ax.set_yticks(y)
        ax.set_yticklabels(rows[label], fontsize=7)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.subplots_adjust(left=0.45, right=0.97, bottom=0.55 / height, top=1 - 0.35 / height)
    return _save(fig, path)
