"""Rebuild the HTML report of a finished run: ``python -m experiments.report OUT [--quiet]``.

Reads only files already in ``OUT`` (manifest.json, cooc/, probes/, interventions/, explore/) and
writes ``OUT/report.html`` (self-contained: opens from disk with no network) and ``OUT/figures/*.png``.
Nothing is recomputed. ``python -m experiments.steer`` runs the ``explore`` stage (top contexts and
PCA views of each reported group) and then this.
"""

from __future__ import annotations

import logging
from pathlib import Path

from experiments.cli import ArgumentParser, entry_point, exit_process
from experiments.run import RECOMPUTE, Run, lock_folder, release_locks, verify_record
from reports.explore import FORMAT_VERSION, ExploreResult
from sources.config import require_known_groups
from sources.errors import ConfigError
from sources.files import stable_hash

log = logging.getLogger("experiments.report")

STAGE = "explore"
SECTIONS = ("seed", "model", "hook", "sae", "data", "cooc", "report")


def report_groups(out: Path, rcfg, cooc) -> dict[str, tuple[int, ...]]:
    """The groups of ``cooc`` (a CoocResult) that get a card: explicit ids, or the evaluated groups first (those chosen
    for a probe task before the others, which a population sample would otherwise crowd out), then the probed ones,
    then the largest ones."""
    from interventions.result import InterventionsResult
    from probes.result import ProbesResult

    members = cooc.members()
    if isinstance(rcfg.groups, list):
        require_known_groups("report.groups", rcfg.groups, members, cooc.groups_csv)
        return {g: members[g] for g in dict.fromkeys(rcfg.groups)}
    chosen: list[str] = []
    interventions = InterventionsResult.load_if_current(out / "interventions")
    if interventions is not None:
        chosen += [str(g["group_id"]) for g in (interventions.summary or {}).get("groups", []) if g.get("probe_tasks")]
        chosen += [str(g) for g in interventions.verdicts["group_id"]]
    probes = ProbesResult.load_if_current(out / "probes")
    if probes is not None:
        pg = probes.groups
        if "selected" in pg:
            chosen += [str(g) for g in pg.loc[pg["selected"].astype(bool), "group_id"]]
    sizes = cooc.groups_table.groupby("group_id")["latent"].size().sort_values(ascending=False, kind="stable")
    chosen += [str(g) for g in sizes.index]
    chosen = [g for g in dict.fromkeys(chosen) if g in members]
    return {g: members[g] for g in chosen[:rcfg.max_groups]}


def explore_stage(cfg, run: Run, progress: bool = True, force: bool = False) -> Path | None:
    """Collect the report's exploration data into ``run.out/explore`` (reused when its inputs are unchanged)."""
    if not cfg.report.enabled:
        return None
    from cooc.result import CoocResult

    if not CoocResult.present(run.out / "cooc"):
        raise ConfigError("report", f"needs the cooc stage's {run.out / 'cooc'}; run python -m experiments.steer first")
    for stage in ("cooc", "probes", "interventions"):  # the files report_groups reads
        if run.manifest["stages"].get(stage, {}).get("complete"):
            run.require_intact(stage, RECOMPUTE)
    groups = report_groups(run.out, cfg.report, CoocResult.load(run.out / "cooc"))
    cooc_key = run.manifest["stages"].get("cooc", {}).get("key")
    key = stable_hash({"sections": run.stage_key(*SECTIONS), "cooc": cooc_key, "groups": groups,
                       "format": FORMAT_VERSION})
    if not force and run.is_done(STAGE, key) and ExploreResult.present(run.out / STAGE):
        log.info("explore: up to date in %s (use --fresh to recompute)", run.out / STAGE)
        return run.out / STAGE
    if not groups:
        log.info("explore: the cooc stage found no groups; the report has no group cards")
    from reports.explore import collect, read_quality
    from sources.saes import sae_folder

    s = cfg.session(progress)
    data = cfg.data if cfg.report.max_tokens is None else cfg.data.model_copy(
        update={"max_tokens": min(cfg.report.max_tokens, cfg.data.max_tokens)})
    view = s.view(cfg.cooc.threshold, cfg.cooc.use_sae_threshold)  # the cooc stage's firing rule
    with run.stage(STAGE, key) as folder:
        collect(s.model, view, data, cfg.hook, cfg.stream, groups, top_contexts=cfg.report.top_contexts,
                window=(cfg.report.context_left, cfg.report.context_right), max_points=cfg.report.max_points,
                seed=cfg.seed, progress=progress,
                sae_quality=read_quality(sae_folder(cfg.sae, s.model, cfg.hook, cfg.data))).save(folder)
    return run.out / STAGE


def build_report(out: str | Path) -> Path:
    """Write ``out/report.html`` and ``out/figures/*.png`` from the files in ``out``; returns the HTML path."""
    from reports.html import write_report

    out = Path(out)
    if not out.is_dir():
        raise ConfigError("OUT", f"{out} is not a folder; give the --out folder of a python -m experiments.steer run")
    if not (out / "manifest.json").exists():
        raise ConfigError("OUT", f"{out} holds no run (no manifest.json); run python -m experiments.steer --out {out} first")
    took = lock_folder(out)  # not while a run writes to it
    try:
        verify_record(out)  # refuse files changed since their stage recorded them
        return write_report(out)
    finally:
        if took:
            release_locks([out])


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.report``."""
    p = ArgumentParser(prog="python -m experiments.report", description=__doc__.splitlines()[0])
    p.add_argument("out", nargs="?", default="runs/default", help="output folder of a run (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="only errors")
    return p.parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.quiet:
        logging.getLogger().setLevel(logging.WARNING)
    path = build_report(args.out)
    log.info("done: %s", path)


if __name__ == "__main__":
    exit_process(main())
