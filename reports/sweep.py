"""The comparison report of a sweep: how co-occurrence changes across a grid of runs (SAE width, L0, threshold, ...).

``write_sweep_report(out, points, sizes, fates, title)`` draws the figures into ``out/figures/`` and writes the
self-contained ``out/report.html``. Its inputs are the tidy tables the sweep writes as CSV (experiments.sweep):

``points``  one row per (point, mining method): the grid values, d_sae, d_model, L0, fraction of latents in groups,
            structure counts, replication, SAE quality
``sizes``   one row per (point, method, size bin): groups and latents in that bin
``fates``   one row per (method, narrower point, wider point, fate): how many groups persist, split, dissolve, vanish
            or are new

The reference work's published fractions (:data:`REFERENCE`) are overlaid on the width and L0 plots, by expansion
factor (d_sae / d_model) so that models of other widths share an axis.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from reports.figures import _save  # noqa: E402
from sources.files import write_text  # noqa: E402

REFERENCE = pd.DataFrame(
    [  # series, model, d_model, architecture, d_sae, l0, percent in subgraphs of size > 1, read off a figure ("about")
        ("GPT-2 L8 feature splitting", "gpt2-small", 768, "relu", 768, None, 45.6, False),
        ("GPT-2 L8 feature splitting", "gpt2-small", 768, "relu", 1536, None, 41.0, False),
        ("GPT-2 L8 feature splitting", "gpt2-small", 768, "relu", 3072, None, 36.1, False),
        ("GPT-2 L8 feature splitting", "gpt2-small", 768, "relu", 6144, None, 35.0, True),
        ("GPT-2 L8 feature splitting", "gpt2-small", 768, "relu", 12288, None, 29.0, True),
        ("GPT-2 L8 feature splitting", "gpt2-small", 768, "relu", 24576, None, 28.0, True),
        ("Gemma Scope L12 widths", "gemma-2-2b", 2304, "jumprelu", 16384, None, 12.0, True),
        ("Gemma Scope L12 widths", "gemma-2-2b", 2304, "jumprelu", 32768, None, 6.5, True),
        ("Gemma Scope L12 widths", "gemma-2-2b", 2304, "jumprelu", 65536, None, 7.0, True),
        ("Gemma Scope L12 16k by L0", "gemma-2-2b", 2304, "jumprelu", 16384, 22, 21.6, False),
        ("Gemma Scope L12 16k by L0", "gemma-2-2b", 2304, "jumprelu", 16384, 41, 14.6, False),
        ("Gemma Scope L12 16k by L0", "gemma-2-2b", 2304, "jumprelu", 16384, 82, 11.8, False),
        ("Gemma Scope L12 16k by L0", "gemma-2-2b", 2304, "jumprelu", 16384, 176, 15.8, False),
        ("Gemma Scope L12 16k by L0", "gemma-2-2b", 2304, "jumprelu", 16384, 445, 15.2, False),
    ],
    columns=["series", "model", "d_model", "architecture", "d_sae", "l0", "percent_in_groups", "approximate"],
)
"""Clarke, Bhatnagar & Bloom's fractions of latents in subgraphs of size > 1 (size-capped cut: largest component
150-200 latents). ``approximate``: read off their figure rather than stated in the text."""
REFERENCE = REFERENCE.assign(expansion=REFERENCE["d_sae"] / REFERENCE["d_model"])

METHOD_LABEL = {"ours": "ours (the stage's groups)", "size_capped": "size-capped cut (reference method)"}
STRUCTURES = ("pair", "clique", "chain", "hub_spoke", "mixed")


def _curve(points: pd.DataFrame, x: str, path: Path, reference: pd.DataFrame, ref_x: str, xlabel: str,
           title: str, by: str = "series", min_points: int = 1) -> Path | None:
    """Percent of latents in groups against ``x``, one line per value of ``by`` and method, the reference's points
    overlaid."""
    if points.empty or points[x].isna().all():
        return None
    fig, ax = plt.subplots(figsize=(8.8, 3.8))
    colours = {"ours": "tab:blue", "size_capped": "tab:orange"}
    points = points.assign(series=points["series"].fillna("").astype(str) if by == "series"
                           else by + "=" + points[by].astype(str))
    markers = {s: m for s, m in zip(sorted(points["series"].unique()), "o^vD<>ph*")}
    for (series, method), sub in points.groupby(["series", "method"], sort=True):
        sub = sub.dropna(subset=[x]).sort_values(x)
        if sub[x].nunique() < min_points:  # e.g. one SAE of an L0 series on the width plot: the L0 plot shows it
            continue
        label = METHOD_LABEL.get(method, method) + (f" [{series}]" if series else "")
        ax.plot(sub[x], 100 * sub["fraction_in_groups"], marker=markers.get(series, "o"), color=colours.get(method),
                label=label, linestyle="-" if len(sub) > 1 else "none", alpha=0.9)
        if "cut_converged" in sub:  # a size-capped cut that missed its target size: drawn hollow
            off = sub[sub["cut_converged"].astype(str).str.lower() == "false"]
            ax.plot(off[x], 100 * off["fraction_in_groups"], marker=markers.get(series, "o"), linestyle="none",
                    color="white", markeredgecolor=colours.get(method), markersize=5)
    greys = ["0.2", "0.45", "0.65"]
    for k, (series, sub) in enumerate(reference.dropna(subset=[ref_x]).groupby("series", sort=True)):
        sub = sub.sort_values(ref_x)
        ax.plot(sub[ref_x], sub["percent_in_groups"], marker="s", linestyle="--", color=greys[k % len(greys)],
                label=f"reference: {series}", markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("% of latents in groups (size > 1)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def _stacked(frame: pd.DataFrame, index: str, columns: str, values: str, path: Path, title: str, ylabel: str,
             order=None) -> Path | None:
    if frame.empty:
        return None
    table = frame.pivot_table(index=index, columns=columns, values=values, aggfunc="sum", fill_value=0, sort=False)
    if order is not None:
        table = table[[c for c in order if c in table.columns]]
    fig, ax = plt.subplots(figsize=(8.8, 5.0))
    table.plot(kind="bar", stacked=True, ax=ax, colormap="Set2", width=0.8)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def figures(out: Path, points: pd.DataFrame, sizes: pd.DataFrame, fates: pd.DataFrame) -> dict[str, Path]:
    """Every figure of the sweep report (name -> PNG path); figures with nothing to draw are left out."""
    fig_dir = Path(out) / "figures"
    # the reference's curves are drawn where the grid is a curve of the same kind: several widths, or several
    # SAEs of one width (an L0 series)
    widths = points["expansion"].nunique() >= 2 if "expansion" in points else False
    l0_series = bool(points.drop_duplicates("point").groupby("d_sae").size().max() >= 2) if "d_sae" in points else False
    made = {
        "width": _curve(points, "expansion", fig_dir / "fraction_by_width.png",
                        REFERENCE[REFERENCE["l0"].isna()] if widths else REFERENCE.iloc[:0], "expansion",
                        "SAE width / d_in (expansion factor)", "Latents in groups against SAE width", min_points=2),
        "l0": _curve(points, "l0", fig_dir / "fraction_by_l0.png",
                     REFERENCE[REFERENCE["l0"].notna()] if l0_series else REFERENCE.iloc[:0], "l0",
                     "L0 (latents firing per token)", "Latents in groups against L0", by="d_sae"),
    }
    for method in ("ours", "size_capped"):
        made[f"sizes_{method}"] = _stacked(sizes[sizes["method"] == method], "point", "size_bin", "n_latents",
                                           fig_dir / f"group_sizes_{method}.png",
                                           f"Latents by group size: {METHOD_LABEL[method]}", "latents")
        structure = points[points["method"] == method].melt(
            id_vars=["point"], value_vars=[f"structure_{s}" for s in STRUCTURES if f"structure_{s}" in points],
            var_name="structure", value_name="groups")
        structure["structure"] = structure["structure"].str.removeprefix("structure_")
        made[f"structures_{method}"] = _stacked(structure.fillna(0), "point", "structure", "groups",
                                                fig_dir / f"structures_{method}.png",
                                                f"Structure labels: {METHOD_LABEL[method]}", "groups", STRUCTURES)
        f = fates[fates["method"] == method] if "method" in fates else fates.iloc[:0]
        if not f.empty:
            f = f.assign(step=f["point_a"] + " → " + f["point_b"])
            made[f"fates_{method}"] = _stacked(f, "step", "fate", "n_groups", fig_dir / f"fates_{method}.png",
                                               f"Groups followed to the next wider SAE: {METHOD_LABEL[method]}",
                                               "groups", ("persists", "splits", "dissolves", "vanishes", "new"))
    return {k: v for k, v in made.items() if v is not None}


def _images(made: dict[str, Path], keys) -> list[str]:
    """``<img>`` tags (PNG inlined as data URIs) of the figures in ``made`` named by ``keys``, in that order."""
    return [f'<img src="data:image/png;base64,{base64.b64encode(Path(made[k]).read_bytes()).decode("ascii")}" '
            f'alt="{k}">' for k in keys if k in made]


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "" if not np.isfinite(v) else f"{v:.{digits}g}"
        return "" if v is None else str(v)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


POINT_COLUMNS = ["point", "method", "d_sae", "l0", "n_alive", "n_tested", "n_groups", "latents_in_groups",
                 "fraction_in_groups", "fraction_of_alive_in_groups", "fraction_of_tested_in_groups",
                 "median_group_size", "largest_group", "largest_group_median_rate", "replication_rate", "jaccard_cut", "cut_converged",
                 "largest_component", "explained_variance", "dead_fraction", "ce_loss_recovered"]


def write_sweep_report(out: Path, points: pd.DataFrame, sizes: pd.DataFrame, fates: pd.DataFrame, title: str,
                       notes: list[str] | None = None) -> Path:
    """Figures and ``out/report.html`` for a finished sweep; returns the page's path."""
    out = Path(out)
    made = figures(out, points, sizes, fates)
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for note in notes or []:
        parts.append(f"<p>{html.escape(note)}</p>")
    parts.append("<h2>Latents in groups</h2>")
    parts.append("<p>Fraction of latents in groups of size &gt; 1, over all d_sae latents and over the latents that "
                 "fired at least once on the counted tokens. <i>ours</i>: the stage's groups (cooc.method of the "
                 "point; by default FDR-controlled edges with effect floors); <i>size_capped</i>: the reference "
                 "method's single global Jaccard cut with the largest component in the target size range, re-mined "
                 "from the same counts (hollow markers: the bisection found no cut inside the range). Reference "
                 "points (dashed, grey) come from other models, SAEs, corpora and L0 scales; they are shown for "
                 "shape, not as a target.</p><p>Read the width curve with two mechanical effects in mind. The "
                 "size-capped cut puts at least min_size latents in its largest component, a floor of min_size / d_sae "
                 "that falls with width (the largest_component column). Our groups come from a pair test whose family "
                 "grows with d_sae squared while each latent fires less often, so power falls with width at a fixed "
                 "token count (n_tested: the latents the test could group).</p>")
    parts += _images(made, ("width", "l0"))
    cols = [c for c in POINT_COLUMNS if c in points.columns]
    parts.append(_table(points[cols]))
    parts.append("<h2>Group sizes, structure and replication</h2>")
    parts += _images(made, ("sizes_ours", "sizes_size_capped", "structures_ours", "structures_size_capped"))
    parts.append("<p>Replication (ours only): the mean share of a group's internal edges that are significant again "
                 "on the held-out documents; the size-capped cut has no test to repeat.</p>")
    if not fates.empty:
        parts.append("<h2>Groups across widths</h2><p>Each member of a wider SAE's group is given the narrower SAE's "
                     "latent with the most similar decoder direction (cosine &ge; the sweep's min_cosine); a group "
                     "descends from the one narrower group holding the largest share (at least min_share) of its "
                     "members' parents. A narrower group persists (one descendant), splits (several), dissolves (no "
                     "descendant group, but some of its members are parents of wider latents) or vanishes (none of "
                     "its members is a parent); groups without an ancestor are new.</p>")
        parts += _images(made, ("fates_ours", "fates_size_capped"))
        parts.append(_table(fates))
    parts.append("<h2>Reference numbers</h2>")
    parts.append(_table(REFERENCE.drop(columns=["expansion"])))
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;font-size:14px}"
             "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%;display:block;margin:1em 0}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>" \
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    path = out / "report.html"
    write_text(path, page)
    return path
