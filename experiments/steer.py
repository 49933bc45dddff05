"""The main job: ``python -m experiments.steer [CONFIG.yaml] [--set k=v ...] [--out DIR] [--fresh]``.

Runs the pipeline declared in the YAML, stage by stage, reusing stages already computed for the same
inputs: stream -> cooc (counts, scores, groups) -> subspaces/probes -> interventions -> report.
Stages that are not implemented yet are listed as such in the report instead of being faked.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from experiments.cli import build_config, entry_point, parser
from experiments.config import ExperimentConfig
from experiments.run import Run

log = logging.getLogger("experiments.steer")

STAGES = ["cooc"]


def run_pipeline(cfg: ExperimentConfig, out: Path, fresh: bool = False, progress: bool = True) -> Run:
    from experiments.cooc import cooc_stage

    run = Run(out, cfg.model_dump(mode="json"), fresh=fresh)
    cooc_stage(cfg, run, progress=progress)
    run.finish(STAGES)
    return run


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parser("python -m experiments.steer", __doc__.splitlines()[0]).parse_args(argv)
    cfg = build_config(ExperimentConfig, args.config, args.overrides)
    out = Path(args.out or cfg.out)
    run = run_pipeline(cfg, out, fresh=args.fresh, progress=not args.quiet)
    log.info("done: %s (stages: %s)", out, ", ".join(f"{k} {v.get('wall_s', '?')} s" for k, v in run.manifest["stages"].items()))


if __name__ == "__main__":
    sys.exit(main())
