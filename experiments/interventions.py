"""Intervene on latent groups: ``python -m experiments.interventions [CONFIG.yaml] [--set k=v ...] [--out DIR] [--fresh]``.

Needs the co-occurrence stage's result in the same output folder (``OUT/cooc``, a :class:`cooc.result.CoocResult`);
uses the probes stage's task examples and windows (``OUT/probes``, a :class:`probes.result.ProbesResult`) for the task
effects when it has run; runs interventions.pipeline.run_interventions and saves its
:class:`interventions.result.InterventionsResult` as ``OUT/interventions/`` (effects.csv, effect_verdicts.csv, arms.csv,
verdicts.csv, summary.json, steering.png), with a copy of the verdicts at ``OUT/verdicts.csv``. This module keeps
only the run bookkeeping (stage key, reuse, checkpoints, the atomic stage folder). See docs/interventions.md.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from experiments.cli import build_config, entry_point, exit_process, parser
from experiments.config import ExperimentConfig
from experiments.preflight import check_inputs
from experiments.run import PARTIAL, RECOMPUTE, Run, read_manifest
from sources.errors import ConfigError
from cooc.result import HINT as COOC_HINT
from interventions.result import FORMAT_VERSION
from sources.files import stable_hash

log = logging.getLogger("experiments.interventions")

STAGE = "interventions"
SECTIONS = ("seed", "model", "hook", "sae", "data", "cooc", "probes", "interventions")  # not stream: results do not depend on it


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
    from cooc.result import CoocResult
    from interventions.pipeline import select_groups
    from probes.result import ProbesResult

    cooc_dir = run.out / "cooc"
    cooc_key = run.manifest["stages"].get("cooc", {}).get("key")
    from experiments.cooc import stage_key as cooc_stage_key

    if cooc_key != cooc_stage_key(cfg, run):  # e.g. the SAE's files were replaced
        raise ConfigError("cooc", f"the co-occurrence stage in {run.out} was computed from other inputs than this "
                          f"config's (settings, or the content of its model, SAE or corpus files; or its files are in an older "
                          f"format); {COOC_HINT}")
    run.require_intact("cooc", RECOMPUTE)
    cooc = CoocResult.load(cooc_dir)
    if cooc.groups_table.empty:  # e.g. a corpus too short for any latent to fire cooc.min_occurrences times
        raise ConfigError("interventions", f"the co-occurrence stage found no groups ({cooc.groups_csv} is empty), "
                          "so there is nothing to intervene on; stream more tokens (data.max_tokens, a longer corpus), "
                          "lower cooc.min_occurrences / cooc.min_count, or set interventions.enabled: false")
    probes_rec = run.manifest["stages"].get("probes", {})
    probes = None
    if probes_rec.get("complete"):
        run.require_intact("probes", RECOMPUTE)  # its task examples and group enrichment are read below
        probes = ProbesResult.load(run.out / "probes")
    use_tasks = icfg.tasks.enabled and icfg.read_layer is not None
    have_examples = probes is not None and not probes.examples.empty
    if use_tasks and icfg.tasks.tasks is not None and not have_examples:
        raise ConfigError("interventions.tasks.tasks", f"task effects for {', '.join(icfg.tasks.tasks)} need the probes stage's "
                                                       f"examples in {run.out / 'probes'}; run python -m experiments.probe "
                                                       "(or python -m experiments.steer) with the same --out first, or set "
                                                       "interventions.tasks.tasks: null")
    probe_groups = probes.selected_groups() if icfg.groups in ("auto", "sample") and icfg.probe_groups and probes is not None else None
    probes_key = probes_rec.get("key") if (use_tasks and have_examples) or probe_groups is not None else None
    key = stable_hash({"sections": run.stage_key(*SECTIONS), "cooc": cooc_key, "probes": probes_key,
                       "format": FORMAT_VERSION})
    folder = run.out / STAGE
    if not force and run.is_done(STAGE, key):
        log.info("interventions: up to date in %s (use --fresh to recompute)", folder)
        return folder
    select_groups(cooc, icfg, probe_groups=probe_groups, seed=cfg.seed)  # bad ids fail early

    from interventions.pipeline import run_interventions

    session = cfg.session(progress, dtype=icfg.dtype)
    d_sae = session.d_sae
    groups = select_groups(cooc, icfg, d_sae=d_sae, probe_groups=probe_groups, seed=cfg.seed)
    population = None
    if icfg.groups == "sample":
        from interventions.pipeline import population_design

        population = population_design(cooc, icfg, cfg.seed)
        log.info("interventions: a sample of %d of %d groups, stratified by structure and size (%s): %s", len(population),
                 int(population["population_groups"].iloc[0]) if len(population) else 0,
                 ", ".join(f"{h} {n}/{N}" for h, n, N in population.drop_duplicates("stratum")[
                     ["stratum", "stratum_sampled", "stratum_groups"]].itertuples(index=False)),
                 " ".join(population["group_id"]))
        drawn = set(population["group_id"])
        extra = [g.group_id for g in groups if g.group_id not in drawn]
        if extra:
            log.info("interventions: also the probe groups %s, outside the sample (not in its fractions)", " ".join(extra))
    if cooc.d_sae != d_sae:
        raise ConfigError("interventions", f"{cooc_dir / 'occurrences.npy'} has {cooc.d_sae} latents but the SAE has "
                                           f"{d_sae}; {COOC_HINT}")
    task_data = None
    if use_tasks and have_examples:
        from interventions.tasks import load_task_data

        task_data = load_task_data(probes.examples, cfg.data, session.model.tokenizer, cfg.probes, cfg.seed, icfg.tasks.tasks,
                                   source=f"the probes stage's examples in {probes.folder}", windows=probes.window_lookup(),
                                   targets=probes.targets)
    elif use_tasks:
        log.info("interventions: no task effects (the probes stage has not run in %s)", run.out)
    with run.stage(STAGE, key, copies=("verdicts.csv",)) as folder:  # OUT/verdicts.csv, recorded with the stage
        checkpoints = _checkpoint_folder(folder, key, fresh=force)
        result = run_interventions(session, groups, icfg, session.view(cfg.cooc.threshold, cfg.cooc.use_sae_threshold).threshold_F,
                                   occ_F=cooc.occ_F, linked=cooc.linked_pairs(),
                                   seed=cfg.seed, progress=progress, task_data=task_data, checkpoints=checkpoints,
                                   population=population)
        result.save(folder)
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
        from interventions.result import InterventionsResult

        sys.stdout.write(render_report(InterventionsResult.load(folder)))
        log.info("done: %s", folder)


if __name__ == "__main__":
    exit_process(main())
