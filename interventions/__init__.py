"""Interventions: ablate or steer latent groups, single latents and matched controls on the real model.

Notebook surface (docs/api.md): :func:`ablate`, :func:`project_out`, :func:`steer` (logits of one edited forward
pass on a :class:`sources.session.Session`) and :func:`evaluate_groups` (the stage's whole comparison without a run
folder). Modules: ``edits`` (edit arithmetic), ``modes`` (the ablation modes table), ``forward`` (many arms in one
pass, per-token effects), ``arms`` (pool scan, arms, controls, evaluation), ``tasks`` (task effects), ``effects``
(per-document statistics, BH, verdicts), ``pipeline`` (the stage), ``markdown`` (its report.md section).
"""

from interventions.api import ablate, evaluate_groups, project_out, steer
from interventions.config import InterventionsConfig

__all__ = ["ablate", "evaluate_groups", "project_out", "steer", "InterventionsConfig"]
