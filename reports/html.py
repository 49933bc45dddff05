"""``OUT/report.html``: one self-contained page (plotly.js and every PNG inlined) built from a run folder.

Sections: summary, run (config and manifest), SAE quality, co-occurrence, verdicts, probes, and one
card per explored group (graph, structure, member latents with their top contexts, PCA view, probe
results, intervention effects and steering dose-response). A section whose stage did not run says so.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from pathlib import Path

import jinja2
import pandas as pd
import plotly.offline
import yaml

from cooc.result import CoocResult
from interventions.result import InterventionsResult
from probes.result import ProbesResult
from probes.tasks import TASKS
from reports.explore import ExploreResult
from reports import figures, interactive
from sources.files import read_json, write_text

log = logging.getLogger(__name__)

TEMPLATE = Path(__file__).with_name("report.html.j2")


# ------------------------------------------------------------------------------------ reading

PAIR_COLUMNS = ["i", "j", "count", "expected", "npmi", "p_value", "p_adj", "edge"]


class _RunFiles:
    """A run folder's stage results, each loaded at most once through its stage's result class (None when the
    stage has not run there), and the run record."""

    def __init__(self, out: Path):
        self.out = out
        self._read: dict[str, object] = {}

    def _once(self, key: str, read):
        if key not in self._read:
            self._read[key] = read()
        return self._read[key]

    def cooc(self) -> CoocResult | None:
        return self._once("cooc", lambda: CoocResult.load_if_current(self.out / "cooc", pairs=PAIR_COLUMNS))

    def probes(self) -> ProbesResult | None:
        return self._once("probes", lambda: ProbesResult.load_if_current(self.out / "probes"))

    def interventions(self) -> InterventionsResult | None:
        return self._once("interventions", lambda: InterventionsResult.load_if_current(self.out / "interventions"))

    def table(self, stage: str, name: str) -> pd.DataFrame:
        """A table of a stage's result (``groups_table``, ``results``, ``effects``, ...); empty when the stage has
        not run or has no such table."""
        result = getattr(self, stage)()
        df = getattr(result, name, None) if result is not None else None
        return df if isinstance(df, pd.DataFrame) else pd.DataFrame()

    def explore(self) -> ExploreResult | None:
        return self._once("explore", lambda: ExploreResult.load_if_current(self.out / "explore"))

    def json(self, rel: str) -> dict:
        def read():
            try:
                return read_json(self.out / rel) if (self.out / rel).exists() else {}
            except (OSError, ValueError):
                return {}
        return self._once(rel, read)


def _fmt(x, digits: int = 3) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    if not math.isfinite(x):
        return "n/a"
    if x != 0 and abs(x) < 1e-3:
        return f"{x:.1e}"
    return f"{x:.{digits}g}"


def _p(x) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(x):
        return "n/a"
    return "<0.001" if x < 1e-3 else f"{x:.3f}"


def _oneline(text) -> str:
    """Context text on one line: newlines shown as ⏎, tabs as spaces."""
    return str(text).replace("\r", "").replace("\n", "⏎").replace("\t", " ") if isinstance(text, str) else ""


def _png(path: Path | bytes | None) -> str | None:
    """A PNG file (or its bytes) as a data URI."""
    if isinstance(path, bytes):
        return "data:image/png;base64," + base64.b64encode(path).decode("ascii")
    if path is None or not Path(path).exists():
        return None
    return _png(Path(path).read_bytes())


def _div(fig) -> str | None:
    if fig is None:
        return None
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})


# ------------------------------------------------------------------------------------ sections

def _cooc_section(run: _RunFiles, figdir: Path) -> dict:
    if run.cooc() is None:
        return {"ran": False}
    man = run.cooc().manifest
    groups = run.table("cooc", "groups_table")
    rows = []
    d_sae = man.get("d_sae")
    in_groups = groups["latent"].nunique() if not groups.empty else 0
    active = man.get("n_active_latents")
    rows.append(("tokens counted", _fmt(man.get("n_tokens"), 6)))
    spread = man.get("documents") or {}
    if spread.get("n_documents"):
        rows.append(("documents counted (largest share, effective number)",
                     f"{spread['n_documents']} ({spread['largest_share']:.1%}, {_fmt(spread['effective_documents'], 4)})"))
    rows.append(("latents (SAE width)", _fmt(d_sae, 7)))
    rows.append(("latents that fire", _fmt(active, 7)))
    rows.append(("latents in groups", f"{in_groups} ({in_groups / active:.1%} of firing latents)" if active else str(in_groups)))
    n_groups = groups["group_id"].nunique() if not groups.empty else 0
    rows.append(("groups", str(n_groups)))
    if n_groups:
        sizes = groups.groupby("group_id").size()
        rows.append(("group size: median / max", f"{int(sizes.median())} / {int(sizes.max())}"))
        rows.append(("pairs (size 2)", f"{int((sizes == 2).sum())} ({(sizes == 2).mean():.0%})"))
    cfg = man.get("config", {})
    rows.append(("method", str(man.get("method", cfg.get("method")))))
    rows.append(("independence test", f"{man.get('test', cfg.get('test'))} ({man.get('null', 'tokens iid')}), BH at "
                                      f"α = {cfg.get('alpha')} over {_fmt(man.get('family_size'), 7)} pairs"))
    rows.append(("pairs scored / edges", f"{_fmt(man.get('n_pairs_scored'), 8)} / {_fmt(man.get('n_edges'), 7)}"))
    if man.get("min_documents_applied"):
        rows.append(("edge floor: documents the pair co-fires in", f"≥ {cfg.get('min_documents')}"))
    iid = man.get("token_iid")
    if iid:
        rows.append(("the token-iid binomial null instead (same floors)",
                     f"{_fmt(iid['n_significant'], 8)} significant pairs, {_fmt(iid['n_edges'], 7)} edges, "
                     f"{iid['n_groups']} groups"))
    rep = man.get("replication")
    if rep:
        held = rep.get("heldout_documents") or {}
        rows.append(("held-out part (replication)", f"{_fmt(rep['heldout_tokens'], 7)} tokens from "
                                                    f"{held.get('n_documents')} other documents"))
        rate = rep.get("edge_replication_rate")
        rows.append(("edges replicated on the held-out documents",
                     f"{rep['edges_replicated']} of {rep['edges_tested']}" + (f" ({rate:.1%})" if rate is not None else "")
                     + f", {rep['null']} null, BH over the edges"))
        if rep.get("groups"):
            rows.append(("groups: median replication rate; replicating at least half their edges",
                         f"{_fmt(rep['group_replication_rate_median'])}; {rep['groups_replicating_half']} of {rep['groups']}"))
        if "replication_rate" in groups and n_groups:
            by = groups.drop_duplicates("group_id").groupby("structure")["replication_rate"].median()
            rows.append(("median replication rate by structure", ", ".join(f"{k} {_fmt(v)}" for k, v in by.items())))
    elif "replication" in man:
        rows.append(("replication", "not run: no held-out documents (data.heldout_fraction 0, cooc.replication off, "
                                    "or an input without document ids)"))
    one = groups.drop_duplicates("group_id") if n_groups else groups
    if "stability" in one:
        st = one["stability"].dropna()
        rows.append((f"membership stability ({cfg.get('stability_replicates')} document-bootstrap replicates): "
                     "median; groups at 0.8 or more", f"{_fmt(st.median())}; {int((st >= 0.8).sum())} of {len(st)}"))
    if "label_stability" in one:
        rows.append(("label stability (best match keeps the edge-graph label): median", _fmt(one["label_stability"].median())))
    if "stability_louvain" in one:
        rows.append(("stability under other Louvain seeds and resolutions: median; groups below 0.8",
                     f"{_fmt(one['stability_louvain'].median())}; {int((one['stability_louvain'] < 0.8).sum())}"))
    if "topology" in one:
        rows.append(("structure labels from", "the edge graph and the members' co-firing (see docs/cooc.md)"))
    pairs = run.table("cooc", "pairs")
    cut = {}
    if not pairs.empty and pairs["edge"].any():
        e = pairs[pairs["edge"].astype(bool)]
        sig = pairs[pairs["p_adj"] <= cfg.get("alpha", 0.05)] if "p_adj" in pairs else e
        cut = {"largest raw p accepted (BH)": _p(sig["p_value"].max()) if len(sig) else "n/a",
               "smallest observed/expected among edges": _fmt((e["count"] / e["expected"]).min()),
               "smallest NPMI among edges": _fmt(e["npmi"].min()),
               "NPMI floor (min_npmi)": _fmt(cfg.get("min_npmi"))}
    structures = []
    if n_groups:
        st = groups.groupby("group_id")["structure"].first().value_counts()
        structures = [(k, int(v)) for k, v in st.items()]
    figs = [
        ("Group sizes by structure", _png(figures.group_sizes(groups, figdir / "cooc_group_sizes.png"))),
        ("Null-model cut: NPMI of scored pairs", _png(figures.npmi_cut(pairs, cfg.get("min_npmi"), figdir / "cooc_npmi.png"))),
    ]
    return {"ran": True, "rows": rows, "cut": cut, "structures": structures, "figures": [f for f in figs if f[1]]}


def _sae_section(run: _RunFiles) -> dict:
    s = run.explore().summary if run.explore() is not None else {}
    q = s.get("sae_quality_file") or {}
    here = s.get("sae") or {}
    rows = []
    if q:
        rows += [("explained variance (held out, when trained)", _fmt(q.get("explained_variance"))),
                 ("L0 (held out)", _fmt(q.get("l0"))),
                 ("dead fraction (held out)", _fmt(q.get("dead_fraction"))),
                 ("CE loss clean / spliced / zero", " / ".join(_fmt(q.get(k), 4) for k in ("ce_clean", "ce_spliced", "ce_zero_ablation"))),
                 ("CE loss recovered", _fmt(q.get("ce_loss_recovered"))),
                 ("evaluation tokens", _fmt(q.get("n_tokens"), 7))]
    if here.get("n_tokens"):
        rows += [("explained variance (this run's tokens)", _fmt(here.get("explained_variance"))),
                 ("mean L0 (this run's tokens)", _fmt(here.get("l0"))),
                 ("latents never firing (this run's tokens)", _fmt(here.get("never_fired_fraction"))),
                 ("tokens", _fmt(here.get("n_tokens"), 7))]
    return {"rows": rows}


WIN = ("beats", "win")
"""Outcomes of a comparison that count as the group winning (interventions/effects.py writes beats/tie/loses)."""

VERDICT_COLUMNS = [("group_id", "group"), ("group_size", "size"), ("structure", "structure"), ("n_docs", "docs"),
                   ("verdict", "verdict"), ("group_estimate", "group"),
                   ("best_single_estimate", "best single"), ("diff_vs_best_single", "Δ vs best single [95% CI]"),
                   ("p_adj_vs_best_single", "p_adj"), ("beats_cofiring_latents", "vs co-firing latents"),
                   ("beats_random_spans", "vs random spans"), ("beats_random_directions", "vs random directions"),
                   ("beats_random_groups", "vs random groups (own tokens)"), ("additivity", "non-additivity"),
                   ("additivity_ratio", "group / sum of members"), ("better_unit_on", "better unit on"),
                   ("task_beats_best_single_on", "task effects beating best single")]


def _verdicts_section(run: _RunFiles, figdir: Path) -> dict:
    v = run.table("interventions", "verdicts")
    if v.empty:
        return {"ran": False}
    rows = []
    for r in v.to_dict("records"):
        cells = []
        for col, _ in VERDICT_COLUMNS:
            val = r.get(col)
            if val is None or (isinstance(val, float) and math.isnan(val)):
                cells.append("—")
            elif col.startswith("p_adj"):
                cells.append(_p(val))
            elif col == "diff_vs_best_single":
                cells.append(f"{_fmt(val)} [{_fmt(r.get('ci_low_vs_best_single'))}, {_fmt(r.get('ci_high_vs_best_single'))}]")
            else:
                # long effect lists may wrap after ';' and '/' (zero-width space), never inside a name
                cells.append(_fmt(val) if isinstance(val, float) else str(val).replace(";", "; ").replace("/", "/\u200b"))
        rows.append({"cells": cells, "group_id": str(r["group_id"]),
                     "win": str(r.get("beats_best_single")) in WIN})
    f = v.rename(columns={"diff_vs_best_single": "estimate", "ci_low_vs_best_single": "ci_low",
                          "ci_high_vs_best_single": "ci_high"}).copy()
    f["win"] = f["beats_best_single"].astype(str).isin(WIN)
    f["label"] = f["group_id"] + " (" + f["group_size"].astype(str) + ")"
    png = figures.forest(f, "label", figdir / "verdicts_vs_best_single.png",
                         "group minus best single latent (primary effect, primary mode)", "difference (> 0: group has the larger effect)")
    n = len(v)
    wins = int(v["beats_best_single"].astype(str).isin(WIN).sum()) if "beats_best_single" in v else 0
    better_any = int(v["better_unit_on"].fillna("").astype(str).str.strip().ne("").sum()) if "better_unit_on" in v else 0
    effect = ", ".join(sorted({f"{m} / {e}" for m, e in zip(v.get("mode", []), v.get("effect", []))}))
    return {"ran": True, "header": [h for _, h in VERDICT_COLUMNS], "rows": rows, "figure": _png(png), "n": n, "wins": wins,
            "effect": effect, "population": _population(run),
            "better_any": better_any,
            "counts": v["verdict"].value_counts().to_dict() if "verdict" in v else {}}


def _population(run: _RunFiles) -> dict | None:
    """The population fractions (groups: sample) over all sampled groups, or None."""
    pop = run.table("interventions", "population")
    res = run.interventions()
    design = (res.summary or {}).get("population") if res is not None else None
    if pop.empty or not design:
        return None
    rows = [[r.question, r.effect, f"{r.k} / {r.n_tested}", f"{_fmt(r.fraction)} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
             _fmt(r.null_rate), _fmt(r.untested_share)] for r in pop[pop["groups"] == "all"].itertuples()]
    text = (f"A pre-registered sample of {design['n_sampled']} of {design['n_population']} groups, stratified by structure "
            "label and size. A group answers yes when its own test (unadjusted, at the run's alpha) finds the difference; "
            "the null rate is the share of groups that would answer yes by chance if none had the property. Fractions "
            "weight each stratum by its share of all groups (Korn-Graubard intervals). Per structure label: "
            "interventions/population.csv.")
    from interventions.markdown import named_with_tasks, outside_sample

    extra = outside_sample(res.summary or {})
    if extra:
        text += (f" Also evaluated, outside the sample and its fractions (chosen for a probe task, not drawn): "
                 f"{named_with_tasks(extra)}.")
    return {"rows": rows, "text": text}


def _probes_section(run: _RunFiles, figdir: Path) -> dict:
    r = run.table("probes", "results")
    if r.empty:
        return {"ran": False}
    comp = r[(r["row_type"] == "comparison") & r["p_adj"].notna()].copy()
    comp["win"] = comp["win"].astype(str).str.lower() == "true"
    comp["label"] = comp["task"].str.replace("/sense", "", regex=False) + " · " + comp["group_id"].astype(str) + " · " + comp["arm"]
    comp = comp.sort_values(["task", "group_id", "arm"])
    fam = comp["family"].fillna("") if "family" in comp else pd.Series("", index=comp.index)
    head = comp[fam == "primary"]  # the pre-specified question: does grouping beat enrichment- and budget-matched controls?
    if len(head) > 40:
        head = head.sort_values("p_adj").head(40).sort_values(["task", "group_id", "arm"])
    png = figures.forest(head, "label", figdir / "probes_primary.png",
                         "probes: group minus enrichment- and budget-matched comparators (primary family, tested metric)",
                         "difference (> 0: the group's representation is better)")
    rows = [[t, g, f, a, m, _fmt(e), f"[{_fmt(lo)}, {_fmt(hi)}]", _p(p), "yes" if w else "no"] for t, g, f, a, m, e, lo, hi, p, w in
            zip(comp["task"], comp["group_id"], fam, comp["arm"], comp["metric"], comp["estimate"], comp["ci_low"],
                comp["ci_high"], comp["p_adj"], comp["win"])]
    skipped = r[r["row_type"] == "skipped"]
    pr = run.probes()
    v = pr.verdicts() if pr is not None else pd.DataFrame()
    vrows = [[t, g, u, "yes" if h else "no", lost or "—", "" if pd.isna(b) else ("yes" if b else "no"), _fmt(e), _p(p)]
             for t, g, u, h, lost, b, e, p in zip(v.get("task", []), v.get("group_id", []), v.get("unit", []),
                                                 v.get("grouping_helps", []), v.get("lost_to", []),
                                                 v.get("beats_baselines", []), v.get("estimate_min", []),
                                                 v.get("p_adj", []))]
    return {"ran": True, "rows": rows, "figure": _png(png), "wins": int(comp["win"].sum()), "n": len(comp),
            "verdicts": vrows, "helps": int(v["grouping_helps"].sum()) if len(v) else 0, "n_verdicts": len(v),
            "skipped": [(t, str(n)) for t, n in zip(skipped["task"], skipped["note"])][:20]}


def _labels_for(points: pd.DataFrame, examples: pd.DataFrame) -> dict[str, pd.Series]:
    """Probe-task labels (each registered task's first scatter column) of scatter tokens that are also probe examples."""
    if examples.empty or points.empty or "char_start" not in points:
        return {}
    out = {}
    key = points["doc_id"].astype(str) + "@" + points["char_start"].astype("Int64").astype(str)
    for task, t in TASKS.items():
        col = t.scatter_columns[0] if t.scatter_columns else None
        ex = examples[examples["task"] == task]
        if col is None or ex.empty or col not in ex:
            continue
        m = dict(zip(ex["doc_id"].astype(str) + "@" + ex["char_start"].astype("Int64").astype(str), ex[col]))
        s = key.map(m)
        if s.notna().any():
            numeric = pd.api.types.is_numeric_dtype(ex[col]) and not pd.api.types.is_bool_dtype(ex[col])
            out[f"{task}: {col}"] = pd.to_numeric(s, errors="coerce") if numeric else s
    return out


def _cards(run: _RunFiles, seed: int) -> list[dict]:
    summary = run.explore().summary if run.explore() is not None else {}
    groups = run.table("cooc", "groups_table")
    contexts = run.table("explore", "contexts")
    scatter = run.table("explore", "scatter")
    effects = run.table("interventions", "effects")
    verdicts = run.table("interventions", "verdicts")
    effect_verdicts = run.table("interventions", "effect_verdicts")
    probes = run.table("probes", "results")
    examples = run.table("probes", "examples")
    probe_sum = run.probes().summary if run.probes() is not None else {}
    probe_figures = run.probes().figures if run.probes() is not None else {}
    occ = run.cooc().occ_F if run.cooc() is not None else None
    pairs = run.table("cooc", "pairs")
    config = run.json("manifest.json").get("config", {})
    primary = config.get("interventions", {}).get("primary_effect", "sqrt_kl_per_norm")
    n_list = int(config.get("report", {}).get("max_members") or 12)
    ids = list((summary.get("groups") or {}).keys())
    if not ids and not verdicts.empty:  # no exploration data: still give the evaluated groups a card
        ids = [str(g) for g in verdicts["group_id"]]
    cards = []
    for gid in ids:
        gi = summary.get("groups", {}).get(gid, {})
        grow = groups[groups["group_id"] == gid] if not groups.empty else pd.DataFrame()
        members = [int(m) for m in (gi.get("members") or grow.get("latent", pd.Series(dtype=int)).tolist())]
        card = {"id": gid, "size": len(members), "structure": str(grow["structure"].iloc[0]) if len(grow) and "structure" in grow else "",
                "stats": [], "members": [], "notes": []}
        if len(grow):
            first = grow.iloc[0]
            card["stats"] = [(k, _fmt(first[k])) for k in ("n_edges", "density", "degree_centralisation", "clustering", "diameter")
                             if k in grow]
        if not pairs.empty and members:
            ms = set(members)
            e = pairs[pairs["edge"].astype(bool) & pairs["i"].isin(ms) & pairs["j"].isin(ms)]
        else:
            e = pd.DataFrame(columns=["i", "j", "npmi", "count"])
        gc = contexts[contexts["group_id"] == gid] if not contexts.empty else pd.DataFrame()
        card["graph"] = _div(interactive.group_graph(members, e, occ, gc, f"co-occurrence graph of {gid}", seed))
        ranked = sorted(members, key=lambda m: -(occ[m] if occ is not None and m < len(occ) else 0))
        for m in ranked[:n_list]:
            rows = gc[gc["latent"] == m].sort_values("rank") if len(gc) else pd.DataFrame()
            card["members"].append({"latent": m, "fires": int(occ[m]) if occ is not None and m < len(occ) else None,
                                    "contexts": [{"left": _oneline(r["left"]), "token": _oneline(r["token"]),
                                                  "right": _oneline(r["right"]),
                                                  "act": _fmt(r["activation"]), "doc": str(r["doc_id"])}
                                                 for _, r in rows.iterrows()]})
        if len(members) > n_list:
            card["notes"].append(f"{len(members) - n_list} more members not listed (most frequently firing first; "
                                 "report.max_members).")
        pts = scatter[scatter["group_id"] == gid] if not scatter.empty else pd.DataFrame()
        card["scatter"] = _div(interactive.pca_scatter(pts.reset_index(drop=True), gi.get("explained_variance_ratio"),
                                                       _labels_for(pts.reset_index(drop=True), examples)))
        if not card["scatter"] and gi.get("note"):
            card["notes"].append(gi["note"])
        # probes
        pr = probes[(probes["group_id"] == gid) & (probes["row_type"] == "comparison") & probes["p_adj"].notna()] if not probes.empty else pd.DataFrame()
        card["probes"] = [[t, a, m, _fmt(v), f"[{_fmt(lo)}, {_fmt(hi)}]", _p(p), str(w)] for t, a, m, v, lo, hi, p, w in
                          zip(pr.get("task", []), pr.get("arm", []), pr.get("metric", []), pr.get("estimate", []),
                              pr.get("ci_low", []), pr.get("ci_high", []), pr.get("p_adj", []), pr.get("win", []))]
        card["probe_figures"] = []
        for task, info in (probe_sum.get("tasks") or {}).items():
            f = (info.get("figures") or {}).get(gid)
            fig = probe_figures.get(Path(f["path"]).stem) if f else None
            if fig is not None:
                pts = fig.points if fig.points is not None else pd.DataFrame()
                card["probe_figures"].append((task, _png(fig.png), _div(interactive.task_scatter(pts, task)) if len(pts) else None))
        # interventions
        ge = effects[effects["group_id"] == gid] if not effects.empty else pd.DataFrame()
        vr = verdicts[verdicts["group_id"] == gid] if not verdicts.empty else pd.DataFrame()
        card["verdict"] = str(vr["verdict"].iloc[0]) if len(vr) and "verdict" in vr else None
        card["effects"] = _div(interactive.effects_chart(ge, primary)) if len(ge) else None
        card["effects_effect"] = primary
        shown = ["kl"] + sorted({x for x in ge.get("effect", []) if str(x).startswith("probe:")})
        card["steering"] = _div(interactive.steering_chart(ge, shown)) if len(ge) else None
        ev = effect_verdicts[effect_verdicts["group_id"] == gid] if not effect_verdicts.empty else pd.DataFrame()
        card["comparisons"] = [
            {"win": str(r.get("better_unit")) == "True" or str(r.get("beats_best_single")) in WIN,
             "cells": [r.get("mode"), r.get("effect"), r.get("kind", ""), _fmt(r.get("group_estimate")), _fmt(r.get("best_single_estimate")),
                       f"{_fmt(r.get('diff_vs_best_single'))} [{_fmt(r.get('ci_low_vs_best_single'))}, {_fmt(r.get('ci_high_vs_best_single'))}]",
                       _p(r.get("p_adj_vs_best_single")), r.get("beats_best_single"),
                       *(f"{r.get('beats_' + c)} ({_p(r.get('p_adj_vs_' + c))})"
                         for c in ("cofiring_latents", "random_spans", "random_directions", "random_groups")),
                       "yes" if str(r.get("better_unit")) == "True" else "no"]}
            for r in ev.to_dict("records")]
        if not card["comparisons"] and len(ge):  # runs from before effect_verdicts.csv existed
            comps = ge[(ge["comparator"] != "clean") & (ge["effect"] == primary) & (ge["scope"] == "fires")]
            card["comparisons"] = [{"win": False, "cells": [m, primary, "", "", "", f"{c}: {_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]",
                                                            _p(p), "", "", "", "", "", ""]}
                                   for c, m, v, lo, hi, p in zip(comps["comparator"], comps["mode"], comps["estimate"],
                                                                 comps["ci_low"], comps["ci_high"], comps["p_adj"])]
        cards.append(card)
    return cards


def _summary(verdicts: dict, probes: dict, cooc: dict) -> list[str]:
    lines = []
    if cooc.get("ran"):
        rows = dict(cooc["rows"])
        lines.append(f"Co-occurrence: {rows.get('groups', '0')} groups; {rows.get('latents in groups', '')}.")
    if probes.get("ran"):
        lines.append(f"Probes: grouping helps (beats the enrichment- and budget-matched comparators) in {probes['helps']} of "
                     f"{probes['n_verdicts']} (target, group, unit) verdicts; {probes['wins']} of {probes['n']} corrected "
                     "comparisons won in all families.")
    if verdicts.get("ran"):
        counts = "; ".join(f"{v}: {n}" for v, n in verdicts["counts"].items())
        lines.append(f"Interventions: {verdicts['wins']} of {verdicts['n']} groups beat their best single latent "
                     f"on the primary effect ({counts}); {verdicts['better_any']} of {verdicts['n']} are a better unit "
                     "on at least one effect (model or task) against the best single latent and both matched controls.")
    return lines


def write_report(out: Path) -> Path:
    """Render ``out/report.html`` (and ``out/figures/*.png``) from the run folder ``out``."""
    run = _RunFiles(out)
    manifest = run.json("manifest.json")
    figdir = out / "figures"
    cooc = _cooc_section(run, figdir)
    sae = _sae_section(run)
    verdicts = _verdicts_section(run, figdir)
    probes = _probes_section(run, figdir)
    cards = _cards(run, int(manifest.get("seed") or 0))
    stages = [(k, v.get("complete"), v.get("wall_s"), v.get("finished", "")) for k, v in (manifest.get("stages") or {}).items()]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE.parent)), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    page = env.get_template(TEMPLATE.name).render(
        title=f"Latent groups vs single latents — {out.name}", out=str(out.name), manifest=manifest,
        config_yaml=yaml.safe_dump(manifest.get("config", {}), sort_keys=False),
        versions=json.dumps(manifest.get("versions", {}), indent=1), stages=stages, summary=_summary(verdicts, probes, cooc),
        cooc=cooc, sae=sae, verdicts=verdicts, probes=probes, cards=cards, plotly_js=plotly.offline.get_plotlyjs())
    path = out / "report.html"
    write_text(path, page)
    return path
