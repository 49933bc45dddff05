"""The probe stage: build each task's dataset, pick groups, evaluate every arm, correct; returns a
:class:`probes.result.ProbesResult` (its files: probes/result.py)."""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from cooc.result import CoocResult
from probes.dataset import build_probe_data
from probes.comparison import COLUMNS, Settings, evaluate_target, finalize, skipped_row
from probes.plots import group_pca_figure
from probes.result import TARGET_COLUMNS, ProbeFigure, ProbesResult, targets_frame
from probes.selection import enrichment_table, select_groups
from probes.tasks import get_task
from probes.tasks.base import target_rng
from sources.config import require_known_groups
from sources.errors import ConfigError
from sources.sae_view import SAEView
from sources.session import open_session

log = logging.getLogger("probes")

MAIN_METRIC = {"regression": "r2", "classification": "auroc"}


def run_probes(cooc: CoocResult, cfg, progress: bool = True, model=None, sae=None) -> ProbesResult:
    """Run the probe stage of an experiment config on the groups of ``cooc`` (a :class:`CoocResult`, e.g.
    ``CoocResult.load(OUT / "cooc")``); returns the :class:`ProbesResult` (``.save(folder)`` writes its files).

    ``model``/``sae`` default to the config's session (``sources.session.open_session``).
    """
    t0 = time.perf_counter()
    pc = cfg.probes
    members = dict(sorted(cooc.members().items()))
    structure = cooc.structure()
    sizes = {g: len(m) for g, m in members.items()}
    if pc.groups == "auto":
        cand = {g: m for g, m in members.items() if pc.min_group_size <= len(m) <= pc.max_group_size}
    else:  # checked before any model is loaded
        require_known_groups("probes.groups", pc.groups, sorted(members), cooc.groups_csv)
        cand = {g: members[g] for g in pc.groups}
    if model is None or sae is None:
        s = open_session(cfg.model, cfg.sae, cfg.hook, cfg.data, cfg.stream, progress=progress)
        model, sae = s.model, s.sae
    d_sae = int(sae.W_dec.shape[0])
    if cooc.d_sae != d_sae:
        raise ConfigError("cooc", f"{cooc.folder or 'the co-occurrence result'}/occurrences.npy has {cooc.d_sae} latents but the configured SAE has {d_sae}; "
                          "the cooc outputs belong to another SAE: rerun `python -m experiments.cooc` with this config")
    view = SAEView(sae, cfg.cooc.threshold, cfg.cooc.use_sae_threshold)  # the cooc stage's firing rule
    W_dec = view.decoder_np()
    thr = view.threshold_F
    settings = Settings.from_config(pc, cfg.seed)

    rows: list[dict] = []
    tables, example_frames = [], []
    windows: dict[str, list] = {}
    figures: dict[str, ProbeFigure] = {}
    target_frames: list[pd.DataFrame] = []
    summary: dict = {"tasks": {}, "settings": settings.__dict__, "n_candidate_groups": len(cand), "cooc_tokens": cooc.n_tokens,
                     "documents": cfg.data.reading(pc.evaluate_on).part}
    timings: dict[str, float] = {}
    linked = cooc.linked_pairs()
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

        targets, skipped = task.targets(data.examples, pc, target_rng(cfg.seed))
        extra, extra_skipped = task.model_targets(data, targets, pc, cfg.seed)
        targets, skipped = targets + extra, skipped + extra_skipped
        target_frames.append(targets_frame(family, targets))
        for name, reason in skipped:
            rows.append(skipped_row(name, reason))
            log.info("probes: %s skipped: %s", name, reason)
        fam["targets"] = [t.task for t in targets]
        fam["skipped_targets"] = dict(skipped)
        fam["selected_groups"] = {}
        family_groups: dict[str, tuple[int, ...]] = {}
        for t in targets:  # groups are chosen per target: they must fire on that target's tokens
            table = _target_enrichment(data, t, sizes)
            if pc.groups == "auto":
                chosen = select_groups(table, pc.n_groups, pc.min_count, pc.min_group_size, pc.max_group_size)
            else:
                chosen = table.set_index("group_id").loc[list(pc.groups)].reset_index()
            table.insert(0, "task", family)
            table.insert(1, "target", t.task)
            table["selected"] = table["group_id"].isin(chosen["group_id"])
            table["structure"] = [structure.get(g, "") for g in table["group_id"]]
            tables.append(table)
            probe_groups = {str(g): cand[str(g)] for g in chosen["group_id"]}
            family_groups.update(probe_groups)
            fam["selected_groups"][t.task] = chosen.to_dict(orient="records")
            if not probe_groups:
                reason = (f"no group fires on at least {pc.min_count} of the {len(t.rows)} tokens of {t.task} (probes.min_count) "
                          f"within sizes {pc.min_group_size}..{pc.max_group_size}; only the ceiling and baselines are reported")
                rows.append(skipped_row(t.task, reason, len(t.rows), int(len(np.unique(data.doc_N[t.rows])))))
                log.warning("probes: %s: %s", t.task, reason)
            t_eval = time.perf_counter()
            rows += evaluate_target(t, data.acts_ND, data.latents_NF, data.doc_N, probe_groups, W_dec, cooc.occ_F, settings,
                                    other_fires_F=data.other_fires_F, linked=linked, threshold_F=thr,
                                    neighbour_acts_ND=data.neighbour_acts_ND)
            timings[f"{t.task}_eval_s"] = round(time.perf_counter() - t_eval, 2)
        probe_groups = family_groups

        if pc.figures and probe_groups:
            fam["figures"] = _figures(family, data, targets, probe_groups, W_dec, thr, figures)
        ex = data.examples.copy()
        ex.insert(0, "task", family)
        example_frames.append(ex)
        windows[family] = data.windows
        timings[f"{family}_total_s"] = round(time.perf_counter() - t_task, 2)

    df = finalize(pd.DataFrame(rows, columns=COLUMNS), pc.alpha)
    comp = (df["row_type"] == "comparison").to_numpy()
    df["group_size"] = df["group_size"].astype("Int64")
    groups = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["task", "group_id"])
    examples = pd.concat(example_frames, ignore_index=True) if example_frames else pd.DataFrame()
    wins = df[df["win"].fillna(False).to_numpy(bool)]
    summary["alpha"] = pc.alpha
    summary["n_comparisons"] = int(np.isfinite(df.loc[comp, "p_value"].to_numpy(np.float64)).sum())
    summary["wins"] = wins.groupby("arm").size().to_dict() if len(wins) else {}
    timings["total_s"] = round(time.perf_counter() - t0, 2)
    summary["timings"] = timings
    _log_headline(df)
    targets = pd.concat(target_frames, ignore_index=True) if target_frames else pd.DataFrame(columns=TARGET_COLUMNS)
    return ProbesResult(df, groups, examples, windows, summary, figures, targets)


def _target_enrichment(data, target, sizes) -> pd.DataFrame:
    """The enrichment table of every candidate group on one target's tokens (probes.selection)."""
    rows = np.asarray(target.rows)
    if data.fires_NG is not None and data.fires_NG.shape[1]:
        task_fires = np.asarray(data.fires_NG[rows].sum(0)).ravel()
    else:
        task_fires = np.zeros(len(data.group_ids), dtype=np.int64)
    return enrichment_table(data.group_ids, [sizes[g] for g in data.group_ids], task_fires, data.other_fires_G, len(rows),
                            data.n_other)


FIGURE_COLUMNS = ("doc_id", "token")
"""Columns of examples.csv copied beside each PCA figure (``<task>_group<id>.csv``, with pc1 and pc2), before the
task's own ``figure_columns``."""


def _figures(family, data, targets, groups, W_dec, thr, figures: dict[str, ProbeFigure]) -> dict:
    """Draw each group's PCA figure into ``figures``; returns the summary's entry for them."""
    ex = data.examples
    task = get_task(family)
    panels = task.panels(ex, targets)
    columns = [c for c in (*FIGURE_COLUMNS, *task.figure_columns) if c in ex]
    out = {}
    for gid, members in groups.items():
        stem = f"{family}_group{gid}"
        drawn = group_pca_figure(f"{family}: group {gid} ({len(members)} latents), PCA of its reconstruction "
                                 f"on task tokens where it fires", data.latents_NF, W_dec, members, thr, panels,
                                 table=ex[columns])
        if drawn is not None:
            info, figures[stem] = drawn
            out[str(gid)] = {"path": f"{stem}.png", **info}
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
