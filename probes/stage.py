"""The probe stage: build each task's dataset, pick groups, evaluate every arm, correct, write files.

Outputs (all written atomically) under the stage folder (``OUT/probes``):

``results.csv``   tidy results, one row per (task, group, arm, metric); see docs/probes.md for the columns
``groups.csv``    enrichment of every candidate group on every task, with a ``selected`` flag
``examples.csv``  every task token with its document, character span, token text and labels
``windows.npz``   the probe windows run through the model (tokens and content mask of each), which the
                  interventions stage's task effects run on
``summary.json``  dataset sizes, skipped targets and why, selected groups, wins at the FDR level, timings
``figures/``      ``<task>_group<id>.png``: PCA of each probed group's reconstruction coloured by the labels, and
                  ``<task>_group<id>.csv``: its points (pc1, pc2, token, document, labels) for the HTML report
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from probes.dataset import WINDOWS_FILE, build_probe_data, save_windows
from probes.comparison import COLUMNS, Settings, evaluate_target, finalize, skipped_row
from probes.inputs import read_cooc
from probes.plots import group_pca_figure
from probes.selection import enrichment_table, select_groups
from probes.tasks import get_task
from sources.config import require_known_groups
from sources.errors import ConfigError
from sources.sae_view import SAEView
from sources.session import open_session
from sources.files import atomic_path, write_json

log = logging.getLogger("probes")

MAIN_METRIC = {"regression": "r2", "classification": "auroc"}


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, "out") as tmp:
        df.to_csv(tmp, index=False)


def run_probes(cfg, cooc_dir: str | Path, out_dir: str | Path, progress: bool = True, model=None, sae=None) -> pd.DataFrame:
    """Run the probe stage for an experiment config; returns the results table (also written to ``out_dir``).

    ``model``/``sae`` default to the config's session (``sources.session.open_session``).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    pc = cfg.probes
    cooc = read_cooc(cooc_dir)
    sizes = cooc.sizes()
    if pc.groups == "auto":
        cand = {g: m for g, m in cooc.members.items() if pc.min_group_size <= len(m) <= pc.max_group_size}
    else:  # checked before any model is loaded
        require_known_groups("probes.groups", pc.groups, sorted(cooc.members), cooc.folder / "groups.csv")
        cand = {g: cooc.members[g] for g in pc.groups}
    if model is None or sae is None:
        s = open_session(cfg.model, cfg.sae, cfg.hook, cfg.data, cfg.stream, progress=progress)
        model, sae = s.model, s.sae
    d_sae = int(sae.W_dec.shape[0])
    if cooc.d_sae != d_sae:
        raise ConfigError("cooc", f"{cooc.folder}/occurrences.npy has {cooc.d_sae} latents but the configured SAE has {d_sae}; "
                          "the cooc outputs belong to another SAE: rerun `python -m experiments.cooc` with this config")
    view = SAEView(sae, cfg.cooc.threshold, cfg.cooc.use_sae_threshold)  # the cooc stage's firing rule
    W_dec = view.decoder_np()
    thr = view.threshold_F
    settings = Settings.from_config(pc, cfg.seed)

    rows: list[dict] = []
    tables, example_frames = [], []
    windows: dict[str, list] = {}
    summary: dict = {"tasks": {}, "settings": settings.__dict__, "n_candidate_groups": len(cand), "cooc_tokens": cooc.n_tokens}
    timings: dict[str, float] = {}
    for family in pc.tasks:
        t_task = time.perf_counter()
        fam = summary["tasks"].setdefault(family, {})
        data, report = build_probe_data(family, cfg, model, sae, cand, thr, progress)
        fam.update(report)
        timings[f"{family}_dataset_s"] = round(time.perf_counter() - t_task, 2)
        log.info("probes: %s: %s task tokens from %s documents (%s windows, %s tokens through the model) in %.0f s", family,
                 report.get("task_tokens", 0), report.get("documents", 0), report.get("windows", 0),
                 report.get("window_tokens", 0), timings[f"{family}_dataset_s"])
        task = get_task(family)
        if data is None or data.n == 0:
            reason = (f"no {task.noun} found in the scanned documents of the corpus ({report.get('candidate_documents', 0)} "
                      f"candidate documents; data: {cfg.data.source}/{cfg.data.name}); see docs/probes.md")
            rows.append(skipped_row(family, reason))
            fam["skipped"] = reason
            log.warning("probes: %s skipped: %s", family, reason)
            continue

        table = enrichment_table(data.group_ids, [sizes[g] for g in data.group_ids], data.task_fires_G, data.other_fires_G,
                                 data.n, data.n_other)
        if pc.groups == "auto":
            chosen = select_groups(table, pc.n_groups, pc.min_count, pc.min_group_size, pc.max_group_size)
        else:
            chosen = table.set_index("group_id").loc[list(pc.groups)].reset_index()
        table.insert(0, "task", family)
        table["selected"] = table["group_id"].isin(chosen["group_id"])
        table["structure"] = [cooc.structure.get(g, "") for g in table["group_id"]]
        tables.append(table)
        probe_groups = {str(g): cand[str(g)] for g in chosen["group_id"]}
        fam["selected_groups"] = chosen.to_dict(orient="records")
        if not probe_groups:
            reason = (f"no group fires on at least {pc.min_count} of the {data.n} task tokens (probes.min_count) within sizes "
                      f"{pc.min_group_size}..{pc.max_group_size}; only the residual ceiling is reported")
            rows.append(skipped_row(family, reason, data.n, int(data.examples['doc_index'].nunique())))
            fam["no_groups"] = reason
            log.warning("probes: %s: %s", family, reason)

        targets, skipped = task.targets(data.examples, pc, np.random.default_rng([int(cfg.seed), 7]))
        for name, reason in skipped:
            rows.append(skipped_row(name, reason))
            log.info("probes: %s skipped: %s", name, reason)
        fam["targets"] = [t.task for t in targets]
        fam["skipped_targets"] = dict(skipped)
        for t in targets:
            t_eval = time.perf_counter()
            rows += evaluate_target(t, data.acts_ND, data.latents_NF, data.doc_N, probe_groups, W_dec, cooc.counts_F, settings)
            timings[f"{t.task}_eval_s"] = round(time.perf_counter() - t_eval, 2)

        if pc.figures and probe_groups:
            fam["figures"] = _figures(family, data, targets, probe_groups, W_dec, thr, out_dir / "figures")
        ex = data.examples.copy()
        ex.insert(0, "task", family)
        example_frames.append(ex)
        windows[family] = data.windows
        timings[f"{family}_total_s"] = round(time.perf_counter() - t_task, 2)

    df = finalize(pd.DataFrame(rows, columns=COLUMNS), pc.alpha)
    comp = (df["row_type"] == "comparison").to_numpy()
    df["group_size"] = df["group_size"].astype("Int64")
    _write_csv(df, out_dir / "results.csv")
    _write_csv(pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["task", "group_id"]), out_dir / "groups.csv")
    _write_csv(pd.concat(example_frames, ignore_index=True) if example_frames else pd.DataFrame(), out_dir / "examples.csv")
    save_windows(out_dir / WINDOWS_FILE, windows)
    wins = df[df["win"].fillna(False).to_numpy(bool)]
    summary["alpha"] = pc.alpha
    summary["n_comparisons"] = int(np.isfinite(df.loc[comp, "p_value"].to_numpy(np.float64)).sum())
    summary["wins"] = wins.groupby("arm").size().to_dict() if len(wins) else {}
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    summary["timings"] = timings
    write_json(out_dir / "summary.json", summary)
    _log_headline(df)
    return df


FIGURE_COLUMNS = ("doc_id", "token")
"""Columns of examples.csv copied beside each PCA figure (``<task>_group<id>.csv``, with pc1 and pc2), before the
task's own ``figure_columns``."""


def _figures(family, data, targets, groups, W_dec, thr, folder: Path) -> dict:
    ex = data.examples
    task = get_task(family)
    panels = task.panels(ex, targets)
    columns = [c for c in (*FIGURE_COLUMNS, *task.figure_columns) if c in ex]
    out = {}
    for gid, members in groups.items():
        path = folder / f"{family}_group{gid}.png"
        info = group_pca_figure(path, f"{family}: group {gid} ({len(members)} latents), PCA of its reconstruction "
                                f"on task tokens where it fires", data.latents_NF, W_dec, members, thr, panels,
                                table=ex[columns])
        if info is not None:
            out[str(gid)] = {"path": str(path.name), **info}
    return out


def _log_headline(df: pd.DataFrame) -> None:
    arms = ["residual", "group_subspace", "group_latents", "best_single_latent", "best_single_direction", "ksparse",
            "matched_subspace", "matched_latents", "random_subspace"]
    for task, sub in df[df["row_type"] == "arm"].groupby("task", sort=False):
        metric = "r2" if (sub["metric"] == "r2").any() else "auroc"
        s = sub[(sub["metric"] == metric) & sub["arm"].isin(arms)]
        for gid, g in s.groupby(s["group_id"].fillna(""), sort=False):
            parts = ", ".join(f"{r.arm} {r.estimate:.3f}" for r in g.itertuples())
            log.info("probes: %s %s%s: %s", task, metric, f" group {gid}" if gid else "", parts)
    for r in df[df["row_type"] == "skipped"].itertuples():
        log.info("probes: skipped %s: %s", r.task, r.note)
