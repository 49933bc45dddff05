"""Interactive views of one group (plotly figures; the page inlines plotly.js once, so they work offline).

Each function returns a ``plotly.graph_objects.Figure`` or None when there is nothing to draw.
"""

from __future__ import annotations

import html

import networkx as nx
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from probes.tasks import TASKS

_LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=40, b=40), height=380, font=dict(size=11))


def _context(left: str, token: str, right: str, width: int = 60) -> str:
    """Hover text: the context with the firing token in brackets (HTML-escaped, plotly renders <b>)."""
    left = str(left)[-width:] if isinstance(left, str) else ""
    right = str(right)[:width // 2] if isinstance(right, str) else ""
    token = str(token) if isinstance(token, str) else ""
    return (html.escape(left) + "<b>[" + html.escape(token) + "]</b>" + html.escape(right)).replace("\n", "⏎")


def group_graph(members: list[int], edges: pd.DataFrame, occurrences: np.ndarray | None,
                contexts: pd.DataFrame | None, title: str, seed: int = 0) -> go.Figure | None:
    """Members as nodes (size ~ firing count), co-occurrence edges (width ~ NPMI), hover: top context."""
    if not members:
        return None
    g = nx.Graph()
    g.add_nodes_from(int(m) for m in members)
    for r in edges.itertuples(index=False):
        g.add_edge(int(r.i), int(r.j), npmi=float(getattr(r, "npmi", 0.5)), count=int(getattr(r, "count", 0)))
    pos = nx.spring_layout(g, seed=seed) if len(g) > 1 else {members[0]: np.zeros(2)}
    fig = go.Figure()
    for u, v, d in g.edges(data=True):
        fig.add_trace(go.Scatter(x=[pos[u][0], pos[v][0]], y=[pos[u][1], pos[v][1]], mode="lines",
                                 line=dict(width=0.5 + 4 * max(0.0, d["npmi"]), color="rgba(90,90,90,0.5)"),
                                 hoverinfo="text", text=f"{u}–{v}: NPMI {d['npmi']:.2f}, together {d['count']}",
                                 showlegend=False))
    nodes = list(g.nodes)
    occ = np.array([float(occurrences[n]) if occurrences is not None and n < len(occurrences) else 1.0 for n in nodes])
    sizes = 10 + 25 * np.sqrt(occ / max(occ.max(), 1.0))
    hover = []
    for n in nodes:
        line = f"latent {n}<br>degree {g.degree(n)}"
        if occurrences is not None and n < len(occurrences):
            line += f", fires on {int(occurrences[n])} tokens"
        if contexts is not None and not contexts.empty:
            top = contexts[(contexts["latent"] == n) & (contexts["rank"] == 0)]
            if len(top):
                t = top.iloc[0]
                line += f"<br>top: {_context(t['left'], t['token'], t['right'])} ({t['activation']:.2f})"
        hover.append(line)
    fig.add_trace(go.Scatter(x=[pos[n][0] for n in nodes], y=[pos[n][1] for n in nodes], mode="markers+text",
                             marker=dict(size=sizes, color=[g.degree(n) for n in nodes], colorscale="Viridis",
                                         line=dict(width=1, color="white"), showscale=True,
                                         colorbar=dict(title="degree", thickness=10)),
                             text=[str(n) for n in nodes], textposition="top center", textfont=dict(size=8),
                             hoverinfo="text", hovertext=hover, showlegend=False))
    fig.update_layout(**_LAYOUT, title=dict(text=title, font=dict(size=12)))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig


def pca_scatter(points: pd.DataFrame, evr: list[float] | None, labels: dict[str, pd.Series] | None = None) -> go.Figure | None:
    """PCA of the group's reconstructions; buttons switch the colouring (strength, top latent, task labels)."""
    if points.empty:
        return None
    hover = [_context(l, t, r) + f"<br>{d}" for l, t, r, d in
             zip(points["left"], points["token"], points["right"], points["doc_id"])]
    views: list[tuple[str, list[go.Scatter]]] = []
    views.append(("strength", [go.Scatter(
        x=points["pc1"], y=points["pc2"], mode="markers", hovertext=hover, hoverinfo="text",
        marker=dict(size=6, color=points["strength"], colorscale="Viridis", showscale=True,
                    colorbar=dict(title="Σ act", thickness=10)), name="tokens", showlegend=False)]))
    top = points["top_latent"].astype(int)
    order = top.value_counts().index[:10]
    traces = []
    for lat in order:
        sel = (top == lat).to_numpy()
        traces.append(go.Scatter(x=points["pc1"][sel], y=points["pc2"][sel], mode="markers", name=f"latent {lat}",
                                 hovertext=[h for h, s in zip(hover, sel) if s], hoverinfo="text", marker=dict(size=6)))
    rest = ~top.isin(order).to_numpy()
    if rest.any():
        traces.append(go.Scatter(x=points["pc1"][rest], y=points["pc2"][rest], mode="markers", name="other",
                                 hovertext=[h for h, s in zip(hover, rest) if s], hoverinfo="text",
                                 marker=dict(size=5, color="lightgrey")))
    views.append(("strongest member", traces))
    for name, values in (labels or {}).items():
        has = values.notna().to_numpy()
        if not has.any():
            continue
        base = go.Scatter(x=points["pc1"][~has], y=points["pc2"][~has], mode="markers", name="no label",
                          hovertext=[h for h, s in zip(hover, ~has) if s], hoverinfo="text",
                          marker=dict(size=4, color="lightgrey"))
        numeric = pd.api.types.is_numeric_dtype(values)
        if numeric:
            lab = go.Scatter(x=points["pc1"][has], y=points["pc2"][has], mode="markers", name=name,
                             hovertext=[f"{h}<br>{name} = {v:g}" for h, v, s in zip(hover, values, has) if s],
                             hoverinfo="text", marker=dict(size=7, color=values[has], colorscale="Plasma", showscale=True,
                                                           colorbar=dict(title=name, thickness=10)))
            views.append((name, [base, lab]))
        else:
            tr = [base]
            for cat in sorted(values[has].astype(str).unique()):
                sel = (values.astype(str) == cat).to_numpy() & has
                tr.append(go.Scatter(x=points["pc1"][sel], y=points["pc2"][sel], mode="markers", name=cat,
                                     hovertext=[f"{h}<br>{name} = {cat}" for h, s in zip(hover, sel) if s],
                                     hoverinfo="text", marker=dict(size=7)))
            views.append((name, tr))
    fig = go.Figure()
    spans = []
    for _, trs in views:
        start = len(fig.data)
        for t in trs:
            fig.add_trace(t)
        spans.append((start, len(fig.data)))
    n = len(fig.data)
    for k, (a, b) in enumerate(spans):
        for i in range(a, b):
            fig.data[i].visible = k == 0
    buttons = [dict(label=f"colour: {name}", method="update",
                    args=[{"visible": [a <= i < b for i in range(n)]}]) for (name, _), (a, b) in zip(views, spans)]
    ev = evr or []
    fig.update_layout(**_LAYOUT, updatemenus=[dict(buttons=buttons, direction="down", x=0.0, y=1.15, xanchor="left",
                                                   yanchor="top", showactive=True)] if len(buttons) > 1 else [],
                      xaxis_title=f"PC1 ({ev[0]:.0%} of variance)" if ev else "PC1",
                      yaxis_title=f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2", legend=dict(font=dict(size=9)))
    return fig


def effects_chart(effects: pd.DataFrame, effect: str) -> go.Figure | None:
    """Ablation effects vs the clean model with confidence intervals: every arm, each mode and scope."""
    e = effects[(effects["comparator"] == "clean") & (effects["effect"] == effect) & (effects["mode"] != "steer")]
    if e.empty:
        return None
    fig = go.Figure()
    for (mode, scope), sub in e.groupby(["mode", "scope"], sort=False):
        fig.add_trace(go.Scatter(
            x=sub["arm"], y=sub["estimate"], mode="markers", name=f"{mode}, {'where the group fires' if scope == 'fires' else 'other tokens'}",
            error_y=dict(type="data", symmetric=False, array=(sub["ci_high"] - sub["estimate"]).clip(lower=0),
                         arrayminus=(sub["estimate"] - sub["ci_low"]).clip(lower=0)),
            hovertext=[f"{a}: {v:.4g} [{lo:.4g}, {hi:.4g}], n={n}" for a, v, lo, hi, n in
                       zip(sub["arm"], sub["estimate"], sub["ci_low"], sub["ci_high"], sub["n"])], hoverinfo="text"))
    fig.update_layout(**{**_LAYOUT, "height": 430}, yaxis_title=effect,
                      legend=dict(font=dict(size=9), orientation="h", yanchor="top", y=-0.3, x=0))
    return fig


def steering_chart(effects: pd.DataFrame, effects_shown: list[str] | None = None) -> go.Figure | None:
    """Dose-response: the effect of adding alpha*v along each group direction and along random directions of
    the same norm, where the group fires; a menu switches between effects (KL, probe readouts, ...)."""
    e = effects[(effects["mode"] == "steer") & (effects["comparator"] == "clean") & (effects["scope"] == "fires")
                ].dropna(subset=["alpha"])
    names = [x for x in (effects_shown or ["kl"]) if x in set(e["effect"])]
    if not names:
        return None
    fig, spans = go.Figure(), []
    for name in names:
        start = len(fig.data)
        for k, (arm, sub) in enumerate(e[e["effect"] == name].sort_values("alpha").groupby("arm", sort=True)):
            color = "rgb(128,128,128)" if "random" in arm else f"hsl({(k * 67) % 360},60%,45%)"
            band = "rgba(128,128,128,0.15)" if "random" in arm else color.replace("hsl", "hsla").replace(")", ",0.15)")
            fig.add_trace(go.Scatter(x=list(sub["alpha"]) + list(sub["alpha"])[::-1],
                                     y=list(sub["ci_high"]) + list(sub["ci_low"])[::-1], fill="toself", mode="lines",
                                     line=dict(width=0), fillcolor=band, hoverinfo="skip", showlegend=False))
            fig.add_trace(go.Scatter(x=sub["alpha"], y=sub["estimate"], mode="lines+markers", name=arm, line=dict(color=color),
                                     hovertext=[f"{arm}, α={a:g}: {v:.4g} [{lo:.4g}, {hi:.4g}]" for a, v, lo, hi in
                                                zip(sub["alpha"], sub["estimate"], sub["ci_low"], sub["ci_high"])],
                                     hoverinfo="text"))
        spans.append((name, start, len(fig.data)))
    n = len(fig.data)
    for i in range(n):
        fig.data[i].visible = spans[0][1] <= i < spans[0][2]
    buttons = [dict(label=name, method="update", args=[{"visible": [a <= i < b for i in range(n)]},
                                                       {"yaxis.title.text": f"{name} where the group fires"}])
               for name, a, b in spans]
    fig.update_layout(**_LAYOUT, xaxis_title="α (steering strength)", yaxis_title=f"{names[0]} where the group fires",
                      updatemenus=[dict(buttons=buttons, direction="down", x=0.0, y=1.15, xanchor="left", yanchor="top")]
                      if len(buttons) > 1 else [])
    return fig


def task_scatter(points: pd.DataFrame, task: str) -> go.Figure | None:
    """A probe task's tokens in the group's PCA plane, coloured by each of the task's scatter columns (buttons switch),
    hover: the task's line per token (``probes.tasks.Task.hover``)."""
    if points.empty or task not in TASKS:
        return None
    t = TASKS[task]
    labels = [c for c in t.scatter_columns if c in points]
    hover = [html.escape(h) for h in t.hover(points)]
    hover = [f"{h}<br>{html.escape(str(d))}" for h, d in zip(hover, points.get("doc_id", ""))]
    fig, spans = go.Figure(), []
    for name in labels:
        start, v = len(fig.data), points[name]
        if pd.api.types.is_numeric_dtype(v) and v.dtype != bool:
            fig.add_trace(go.Scatter(x=points["pc1"], y=points["pc2"], mode="markers", name=name, hovertext=hover,
                                     hoverinfo="text", marker=dict(size=6, color=v, colorscale="Plasma", showscale=True,
                                                                   colorbar=dict(title=name, thickness=10))))
        else:
            for cat in sorted(v.astype(str).unique()):
                sel = (v.astype(str) == cat).to_numpy()
                fig.add_trace(go.Scatter(x=points["pc1"][sel], y=points["pc2"][sel], mode="markers", name=cat,
                                         hovertext=[h for h, s in zip(hover, sel) if s], hoverinfo="text", marker=dict(size=6)))
        spans.append((name, start, len(fig.data)))
    if not spans:
        return None
    n = len(fig.data)
    for i in range(n):
        fig.data[i].visible = spans[0][1] <= i < spans[0][2]
    buttons = [dict(label=f"colour: {name}", method="update", args=[{"visible": [a <= i < b for i in range(n)]}])
               for name, a, b in spans]
    fig.update_layout(**_LAYOUT, xaxis_title="PC1", yaxis_title="PC2", legend=dict(font=dict(size=9)),
                      updatemenus=[dict(buttons=buttons, direction="down", x=0.0, y=1.15, xanchor="left", yanchor="top")]
                      if len(buttons) > 1 else [])
    return fig
