"""Configuration of the report (the ``report:`` section of an experiment config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from sources.config import Section, group_ids_or_auto


class ReportConfig(Section):
    """The HTML report and the exploration data it shows (top contexts, PCA views) for each group card."""

    enabled: bool = True
    """Collect exploration data and write OUT/report.html in python -m experiments.steer."""
    groups: Literal["auto"] | list[str] = "auto"
    """auto: the groups the interventions and probes stages evaluated, then the largest groups, up to
    max_groups; or explicit group ids from OUT/cooc/groups.csv."""
    max_groups: int = Field(8, ge=1)
    """Group cards in the report (with groups: auto)."""
    top_contexts: int = Field(5, ge=1, le=50)
    """Top-activating contexts shown per member latent."""
    max_members: int = Field(12, ge=1)
    """Member latents listed (with contexts) per group card: the most frequently firing members first."""
    context_left: int = Field(12, ge=0)
    """Tokens of context shown before the highlighted token."""
    context_right: int = Field(4, ge=0)
    """Tokens of context shown after the highlighted token."""
    max_points: int = Field(400, ge=10)
    """Tokens per group in the PCA scatter (a seeded random sample of the tokens where the group fires)."""
    max_tokens: int | None = Field(None, ge=1)
    """Tokens of the data section scanned for contexts (None: all of data.max_tokens, read from the activation cache)."""

    @field_validator("groups")
    @classmethod
    def _ids_not_empty(cls, v):
        return group_ids_or_auto(v)
