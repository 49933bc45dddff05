"""Configuration of the probe stage (the ``probes:`` section of an experiment config); see docs/probes.md."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, create_model, field_validator, model_validator

from probes.tasks import TASKS
from sources.config import Section, positive_numbers

TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
"""A registered probe task (probes.tasks.TASKS)."""


class _ProbesSection(Section):
    """What latent groups encode, probed against single latents, matched controls and the full residual stream."""

    tasks: list[TaskName] = ["url_position", "word_sense"]
    """Probe tasks to build from the corpus (data: section)."""
    groups: Literal["auto"] | list[str] = "auto"
    """auto: the n_groups groups most enriched on each task's tokens; or explicit group ids of OUT/cooc/groups.csv (e.g. [g1a2b3c4d5e])."""
    n_groups: int = Field(3, ge=1)
    """Groups probed per task with groups: auto."""
    min_group_size: int = Field(2, ge=1)
    """auto only considers groups of at least this many latents."""
    max_group_size: int = Field(32, ge=1)
    """... and at most this many."""
    min_count: int = Field(20, ge=1)
    """auto only considers groups that fire (any member) on at least this many task tokens."""
    max_tokens: int = Field(1500, ge=10)
    """Probe dataset size: at most this many task tokens per task."""
    evaluate_on: Literal["heldout", "discovery", "all"] = "heldout"
    """Documents the probe datasets are drawn from: heldout (default) keeps them apart from the discovery documents
    the groups were found on (data.heldout_fraction), so a group is not probed on the text that made it."""
    max_documents: int | None = Field(20000, ge=1)
    """Scan at most this many documents of the corpus for task examples (None: all of them)."""
    prefix_tokens: int = Field(32, ge=0)
    """Tokens of the same document the model sees before the first task token of each probe window (with
    random_prefix: at most this many)."""
    random_prefix: bool = True
    """Draw each window's prefix length at random in [prefix_tokens // 4, prefix_tokens] (seeded), so that a task
    token's position in the window is not fixed by where the window starts."""
    folds: int = Field(5, ge=2)
    """Cross-validation folds, grouped by document."""
    n_bootstrap: int = Field(1000, ge=50)
    """Document-level bootstrap replicates for intervals and paired tests."""
    n_controls: int = Field(50, ge=1)
    """Draws of the primary controls per probed group and target: enrichment-matched groups (their latents and their
    decoder span) and the best member direction plus enrichment-matched directions."""
    n_exploratory_controls: int = Field(10, ge=1)
    """Draws of the exploratory controls: frequency-matched groups and random subspaces."""
    n_freq_bins: int = Field(10, ge=1)
    """Firing-frequency quantile bins for matched groups."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """False discovery rate (Benjamini–Hochberg over all comparisons of the run) for the reported wins."""
    ci_level: float = Field(0.95, gt=0, lt=1)
    """Confidence level of the bootstrap intervals."""
    regularisation: list[float] = [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
    """L2 strengths tried for every probe (ridge alpha; logistic C = 1/strength; standardised features); each arm picks
    one per training fold by inner document-grouped CV. A single value fixes it."""
    inner_folds: int = Field(3, ge=2)
    """Document-grouped inner folds that choose the L2 strength."""
    figures: bool = True
    """Write PCA scatter plots of each probed group under probes/figures/."""

    @field_validator("groups", mode="before")
    @classmethod
    def _groups(cls, v):
        if v == "auto":
            return v
        if isinstance(v, (list, tuple)) and v and all(isinstance(g, (str, int)) and not isinstance(g, bool) for g in v):
            ids = [str(g).strip() for g in v]
            if all(ids):
                return list(dict.fromkeys(ids))
        raise ValueError(f"give auto or a non-empty list of group ids from OUT/cooc/groups.csv, got {v!r}")

    @field_validator("regularisation", mode="before")
    @classmethod
    def _reg(cls, v):
        return positive_numbers(v)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        if not v:
            raise ValueError(f"give at least one task ({', '.join(TASKS)})")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _sizes(self):
        if self.min_group_size > self.max_group_size:
            raise ValueError(f"min_group_size ({self.min_group_size}) must be <= max_group_size ({self.max_group_size})")
        return self


ProbesConfig = create_model(
    "ProbesConfig", __base__=_ProbesSection, __module__=__name__, __doc__=_ProbesSection.__doc__,
    **{name: (t.spec, Field(default_factory=t.spec, description=f"The {name} task (probes/tasks/{name}.py)."))
       for name, t in TASKS.items() if t.spec is not None})
"""The ``probes:`` section: the shared settings above plus one section per registered task that has one."""
