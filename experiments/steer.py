"""The main job: ``python -m experiments.steer [CONFIG.yaml] [--set k=v ...] [--out DIR] [--fresh]``.

Runs the pipeline declared in the YAML, stage by stage: stream -> cooc (counts, scores, groups) ->
subspaces/probes -> interventions -> explore (contexts and PCA views of the reported groups) ->
report (``OUT/report.md`` and the self-contained ``OUT/report.html``). A stage whose inputs (the config sections it depends on)
are unchanged since it last completed in the same output folder is reused; ``--fresh`` recomputes all.
The model and SAE are loaded and checked against each other before anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from experiments.cli import build_config, entry_point, exit_process, parser
from experiments.config import ExperimentConfig
from experiments.preflight import check_inputs
from experiments.run import Run
from sources.files import write_text

log = logging.getLogger("experiments.steer")

STAGES = ["cooc", "probes", "interventions", "explore"]


def run_pipeline(cfg: ExperimentConfig, out: Path, fresh: bool = False, progress: bool = True) -> Run:
    from experiments.cooc import cooc_stage
    from experiments.interventions import interventions_stage
    from experiments.probe import probe_stage
    from experiments.report import build_report, explore_stage
    from interventions.markdown import NOT_RUN, render_report
    from interventions.result import InterventionsResult
    run = Run(out, cfg.model_dump(mode="json"), fresh=fresh)  # locks the folder; writes nothing yet
    try:
        check_inputs(cfg, run, progress)  # bad corpus/model/SAE/hook/group ids: exit 2 before any stage starts
        cooc_stage(cfg, run, progress=progress, force=fresh)
        probe_stage(cfg, run, progress=progress, force=fresh)
        interventions_stage(cfg, run, progress=progress, force=fresh)
        explore_stage(cfg, run, progress=progress, force=fresh)
        result = InterventionsResult.load(run.out / "interventions") if cfg.interventions.enabled else None
        write_text(run.out / "report.md", render_report(result) if result is not None else NOT_RUN)
        run.finish([s for s in STAGES if (s != "interventions" or cfg.interventions.enabled)
                    and (s != "explore" or cfg.report.enabled)])
        if cfg.report.enabled:
            build_report(run.out)
    finally:
        run.close()
    return run


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.steer`` (also what tests check the docs' commands with)."""
    return parser("python -m experiments.steer", __doc__.splitlines()[0]).parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(ExperimentConfig, args.config, args.overrides)
    out = Path(args.out or cfg.out)
    run = run_pipeline(cfg, out, fresh=args.fresh, progress=not args.quiet)
    stages = ", ".join(f"{k} {v.get('wall_s', '?')} s" for k, v in run.manifest["stages"].items())
    log.info("done: %s/report.md and %s/report.html (stage wall times: %s)", out, out, stages)


if __name__ == "__main__":
    exit_process(main())
