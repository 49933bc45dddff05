"""Intervene on latent groups: ``python -m experiments.interventions [CONFIG.yaml] [--set k=v ...] [--out DIR] [--fresh]``.

Needs the co-occurrence stage's outputs in the same output folder (``OUT/cooc/groups.csv``); uses the probes
stage's task examples (``OUT/probes/examples.csv``) for the task effects when it has run; writes
``OUT/interventions/`` (effects.csv, effect_verdicts.csv, arms.csv, verdicts.csv, summary.json, steering.png)
and ``OUT/verdicts.csv``. See docs/interventions.md.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.cli import build_config, entry_point, parser
from experiments.config import ExperimentConfig
from experiments.preflight import check_inputs
from experiments.run import PARTIAL, RECOMPUTE, Run, read_manifest
from sources.errors import ConfigError
from sources.files import atomic_path, read_csv, stable_hash, write_json

log = logging.getLogger("experiments.interventions")

STAGE = "interventions"
SECTIONS = ("seed", "model", "hook", "sae", "data", "cooc", "probes", "interventions")  # not stream: results do not depend on it
COOC_HINT = "run python -m experiments.steer (or python -m experiments.cooc) with the same config and --out first"


def interventions_stage(cfg: ExperimentConfig, run: Run, progress: bool = True, force: bool = False) -> Path | None:
    """Run (or reuse) the interventions stage of ``run``; returns its folder ``run.out / "interventions"``
    (None when ``interventions.enabled`` is false).

    Needs ``run.out/cooc/groups.csv`` (ConfigError otherwise, before any model is loaded). Writes
    ``interventions/effects.csv``, ``interventions/arms.csv``, ``interventions/verdicts.csv``,
    ``interventions/summary.json`` and a copy of the verdicts at ``run.out/verdicts.csv``. Reused when
    neither the config sections it depends on nor the cooc stage changed; ``force`` recomputes it.
    An interrupted stage resumes from its per-group checkpoints (``.staging/interventions/.partial/<key>/``, removed
    when the stage completes): finished groups are loaded, not recomputed, and the outputs are byte-identical
    to an uninterrupted run's.
    """
    icfg = cfg.interventions
    if not icfg.enabled:
        log.info("interventions: disabled (interventions.enabled: false)")
        return None
    from interventions.pipeline import read_groups, select_groups

    cooc_dir = run.out / "cooc"
    cooc_key = run.manifest["stages"].get("cooc", {}).get("key")
    from experiments.cooc import stage_key as cooc_stage_key

    if cooc_key != cooc_stage_key(cfg, run):  # e.g. the SAE's files were replaced
        raise ConfigError("cooc", f"the co-occurrence stage in {run.out} was computed from other inputs than this "
                          f"config's (settings, or the content of its model, SAE or corpus files); {COOC_HINT}")
    run.require_intact("cooc", RECOMPUTE)
    groups_df = read_groups(cooc_dir / "groups.csv")
    if groups_df.empty:  # e.g. a corpus too short for any latent to fire cooc.min_occurrences times
        raise ConfigError("interventions", f"the co-occurrence stage found no groups ({cooc_dir / 'groups.csv'} is empty), "
                          "so there is nothing to intervene on; stream more tokens (data.max_tokens, a longer corpus), "
                          "lower cooc.min_occurrences / cooc.min_count, or set interventions.enabled: false")
    probes_rec = run.manifest["stages"].get("probes", {})
    if probes_rec.get("complete"):
        run.require_intact("probes", RECOMPUTE)  # its task examples and group enrichment are read below
    examples_csv = run.out / "probes" / "examples.csv"
    use_tasks = icfg.tasks.enabled and icfg.read_layer is not None
    have_examples = bool(probes_rec.get("complete")) and examples_csv.exists()
    if use_tasks and icfg.tasks.tasks is not None and not have_examples:
        raise ConfigError("interventions.tasks.tasks", f"task effects for {', '.join(icfg.tasks.tasks)} need the probes stage's "
                                                       f"{examples_csv}; run python -m experiments.probe (or "
                                                       "python -m experiments.steer) with the same --out first, or set "
                                                       "interventions.tasks.tasks: null")
    probe_groups = _probe_groups(run.out) if icfg.groups == "auto" and icfg.probe_groups and probes_rec.get("complete") else None
    probes_key = probes_rec.get("key") if (use_tasks and have_examples) or probe_groups is not None else None
    key = stable_hash({"sections": run.stage_key(*SECTIONS), "cooc": cooc_key, "probes": probes_key})
    folder = run.out / STAGE
    if not force and run.is_done(STAGE, key):
        log.info("interventions: up to date in %s (use --fresh to recompute)", folder)
        return folder
    select_groups(groups_df, icfg, source=str(cooc_dir / "groups.csv"), probe_groups=probe_groups)  # bad ids fail early

    from interventions.pipeline import run_interventions

    session = cfg.session(progress)
    d_sae = session.d_sae
    groups = select_groups(groups_df, icfg, d_sae=d_sae, source=str(cooc_dir / "groups.csv"), probe_groups=probe_groups)
    occ = _occurrences(cooc_dir, d_sae)
    task_data = None
    if use_tasks and have_examples:
        from interventions.tasks import load_task_data
        from probes.dataset import WINDOWS_FILE, load_windows

        examples = read_csv(examples_csv, "probes", RECOMPUTE, dtype={"doc_id": str}, low_memory=False)
        windows_npz = run.out / "probes" / WINDOWS_FILE
        windows = load_windows(windows_npz) if windows_npz.exists() else None  # None: a probes stage from before
        task_data = load_task_data(examples, cfg.data, session.model.tokenizer, cfg.probes, cfg.seed, icfg.tasks.tasks,
                                   source=str(examples_csv), windows=windows)
    elif use_tasks:
        log.info("interventions: no task effects (the probes stage has not run in %s)", run.out)
    with run.stage(STAGE, key, copies=("verdicts.csv",)) as folder:  # OUT/verdicts.csv, recorded with the stage
        checkpoints = _checkpoint_folder(folder, key, fresh=force)
        result = run_interventions(session.model, session.sae, cfg.hook, cfg.data, cfg.stream, groups, icfg,
                                   session.view(cfg.cooc.threshold, cfg.cooc.use_sae_threshold).threshold_F, occ_F=occ, seed=cfg.seed, progress=progress,
                                   task_data=task_data, checkpoints=checkpoints)
        write_outputs(folder, result, icfg)
    return run.out / STAGE


def _checkpoint_folder(folder: Path, key: str, fresh: bool = False) -> Path:
    """``folder/.partial/<key>``: the per-group checkpoints of an unfinished stage with this key (see
    interventions.pipeline.run_interventions). Checkpoints of other keys (another config) are removed, and
    all of them with ``fresh`` (--fresh recomputes everything)."""
    partial = folder / PARTIAL
    if partial.is_dir():
        for old in partial.iterdir():
            if not (fresh or old.name != key):
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    have = sorted(p.name for p in (partial / key).glob("group_*.pkl")) if (partial / key).is_dir() else []
    if have:
        log.info("interventions: resuming from %d group checkpoint(s) in %s", len(have), partial / key)
    return partial / key


def _probe_groups(out: Path) -> "pd.DataFrame | None":
    """The probes stage's group enrichment table (OUT/probes/groups.csv), or None when it is missing or unusable."""
    path = out / "probes" / "groups.csv"
    if not path.exists():
        return None
    df = read_csv(path, "probes", RECOMPUTE, dtype={"group_id": str})
    return df if {"task", "group_id", "enrichment", "selected"} <= set(df.columns) else None


def _occurrences(cooc_dir: Path, d_sae: int) -> np.ndarray | None:
    path = cooc_dir / "occurrences.npy"
    if not path.exists():
        return None
    occ = np.load(path)
    if occ.shape != (d_sae,):
        raise ConfigError("interventions", f"{path} has {occ.shape[0]} latents but the SAE has {d_sae}; {COOC_HINT}")
    return occ


def write_outputs(folder: Path, result, icfg) -> None:
    """Write the stage's files (each atomically); the stage copies ``verdicts.csv`` to the run folder."""
    folder = Path(folder)
    with atomic_path(folder / "effects.csv") as tmp:
        result.effects.to_csv(tmp, index=False)
    with atomic_path(folder / "arms.csv") as tmp:
        result.arms.to_csv(tmp, index=False)
    if result.effect_verdicts is not None:
        with atomic_path(folder / "effect_verdicts.csv") as tmp:
            result.effect_verdicts.to_csv(tmp, index=False)
    summary = {
        "n_groups": int(len(result.verdicts)),
        "primary": {"mode": icfg.modes[0], "effect": icfg.primary_effect, "scope": "fires"},
        "alpha": icfg.alpha,
        "n_boot": icfg.n_boot,
        "read_layer": getattr(result, "read_layer", None),
        "tasks": {td.family: {"n_examples": int(len(td.examples)), "n_windows": len(td.windows),
                              "n_documents": int(td.examples["doc_index"].nunique()) if len(td.examples) else 0,
                              "readouts": td.quality}
                  for td in getattr(result, "tasks", [])},
        "groups": [{"group_id": e.plan.group.group_id, "n_docs": e.n_docs, "n_contexts": e.n_contexts,
                    "n_tokens_fires": e.n_tokens_fires, "n_arms": len(e.plan.arms),
                    "group_norm": e.plan.group_norm, "tested_members": list(e.plan.tested_members),
                    "random_groups": [list(r) for r in e.plan.random_groups], "control_frequency_bins": e.plan.control_bins, "doc_ids": e.doc_ids,
                    "context_ids": e.context_ids, "context_lengths": e.context_lengths,
                    "tasks": [{"family": t.family, "n_docs": t.n_docs, "n_windows": t.n_windows, "n_task_tokens": t.n_tokens,
                               "n_task_tokens_fires": t.n_tokens_fires, "doc_ids": t.doc_ids, "best_single": t.best_single}
                              for t in e.tasks]}
                   for e in result.evals],
    }
    write_json(folder / "summary.json", summary)
    if (result.effects["mode"] == "steer").any():
        from interventions.markdown import plot_dose_response

        with atomic_path(folder / "steering.png") as tmp:
            plot_dose_response(result.effects, tmp)
    with atomic_path(folder / "verdicts.csv") as tmp:
        result.verdicts.to_csv(tmp, index=False)


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.interventions`` (also what tests check the docs' commands with)."""
    return parser("python -m experiments.interventions", __doc__.splitlines()[0]).parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(ExperimentConfig, args.config, args.overrides)
    out = Path(args.out or cfg.out)
    if not (out / "manifest.json").exists():
        raise ConfigError("out", f"{out} holds no run (no manifest.json); {COOC_HINT}")
    config = cfg.model_dump(mode="json")
    old = read_manifest(out).get("config", {})
    changed = [s for s in ("model", "hook", "sae", "data", "cooc") if s in old and old.get(s) != config.get(s)]
    if changed:
        raise ConfigError(changed[0], f"differs from the run in {out} (sections changed: {', '.join(changed)}), so its "
                                      f"cooc outputs do not match this config; {COOC_HINT}, or use the run's own config")
    run = Run(out, config)
    check_inputs(cfg, run, progress=not args.quiet)
    if not run.manifest["stages"].get("cooc", {}).get("complete"):
        raise ConfigError("cooc", f"{out} has no finished co-occurrence stage; {COOC_HINT}")
    folder = interventions_stage(cfg, run, progress=not args.quiet, force=args.fresh)
    if folder is not None:
        from interventions.markdown import render_report

        sys.stdout.write(render_report(out))
        log.info("done: %s", folder / "effects.csv")


if __name__ == "__main__":
    sys.exit(main())
