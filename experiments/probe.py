"""Probe latent groups: ``python -m experiments.probe [CONFIG.yaml] [--set k=v ...] [--out DIR] [--fresh]``.

Needs the co-occurrence stage's outputs in the same output folder (``OUT/cooc``, read as a
:class:`cooc.result.CoocResult`); runs probes.stage.run_probes and saves its :class:`probes.result.ProbesResult`
as ``OUT/probes`` (results.csv, groups.csv, examples.csv, targets.csv, windows.npz, summary.json, figures/). This module keeps
only the run bookkeeping. See docs/probes.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

from experiments.cli import build_config, entry_point, exit_process, parser
from experiments.config import ExperimentConfig
from experiments.preflight import check_inputs
from experiments.run import Run
from cooc.result import HINT as COOC_HINT
from probes.result import FORMAT_VERSION
from sources.errors import ConfigError
from sources.files import stable_hash

log = logging.getLogger("experiments.probe")

STAGE = "probes"
SECTIONS = ("seed", "model", "hook", "sae", "data", "cooc", "probes")


def probe_stage(cfg: ExperimentConfig, run: Run, progress: bool = True, force: bool = False) -> Path:
    """Run (or reuse) the probe stage of ``run``; returns its folder ``run.out / "probes"``.

    Requires a finished cooc stage in the same run (ConfigError otherwise, which the CLIs turn into
    exit code 2). The stage is reused when neither the config sections it depends on nor the cooc
    stage changed; ``force`` recomputes it.
    """
    cooc_dir = run.out / "cooc"
    cooc_rec = run.manifest["stages"].get("cooc", {})
    if not cooc_rec.get("complete"):
        raise ConfigError("cooc", f"{run.out} has no finished co-occurrence stage; {COOC_HINT}")
    from experiments.cooc import stage_key as cooc_stage_key

    if cooc_rec.get("key") != cooc_stage_key(cfg, run):
        raise ConfigError("cooc", f"the co-occurrence stage in {run.out} was computed with other settings than this config "
                          f"(model, hook, sae, data, activations, cooc or seed differ, or the files are in an older format), so its "
                          f"groups do not belong to it; "
                          f"{COOC_HINT}, or use the run's own config")
    run.require_intact("cooc", COOC_HINT)
    key = stable_hash({"sections": run.stage_key(*SECTIONS), "cooc": cooc_rec.get("key"), "format": FORMAT_VERSION})
    if not force and run.is_done(STAGE, key):
        log.info("probes: up to date in %s (use --fresh to recompute)", run.out / STAGE)
        return run.out / STAGE
    from cooc.result import CoocResult
    from probes.stage import run_probes

    cooc = CoocResult.load(cooc_dir)
    with run.stage(STAGE, key) as folder:
        run_probes(cooc, cfg, progress).save(folder)
    return run.out / STAGE


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.probe`` (also what tests check the docs' commands with)."""
    return parser("python -m experiments.probe", __doc__.splitlines()[0]).parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(ExperimentConfig, args.config, args.overrides)
    out = Path(args.out or cfg.out)
    if not (out / "manifest.json").exists():
        raise ConfigError("out", f"{out} holds no run (no manifest.json); {COOC_HINT}")
    run = Run(out, cfg.model_dump(mode="json"))
    check_inputs(cfg, run, progress=not args.quiet)
    folder = probe_stage(cfg, run, progress=not args.quiet, force=args.fresh)
    log.info("done: %s", folder)


if __name__ == "__main__":
    exit_process(main())
