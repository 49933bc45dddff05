"""Configuration of the probe stage (the ``probes:`` section of an experiment config); see docs/probes.md."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from probes.lexicon import DEFAULT_LEXICON
from sources.config import Section, positive_numbers

TaskName = Literal["url_position", "word_sense"]


class WordSenseEntry(Section):
    """One ambiguous word: exactly two senses with their cue words."""

    senses: dict[str, list[str]]
    """Sense name -> cue words (single lowercase words, matched as whole words, case-insensitively)."""
    exclude: list[str] = []
    """Phrases containing the word (e.g. "west bank") whose occurrences are dropped."""
    window_before: int | None = Field(None, ge=0)
    """Words before the occurrence searched for cues (default: word_sense.window_words)."""
    window_after: int | None = Field(None, ge=0)
    """Words after the occurrence searched for cues (default: word_sense.window_words)."""

    @field_validator("senses")
    @classmethod
    def _two_senses(cls, v):
        if len(v) != 2:
            raise ValueError(f"give exactly two senses, got {len(v)}: {', '.join(v) or 'none'}")
        for name, cues in v.items():
            if not cues:
                raise ValueError(f"sense {name!r} has no cue words")
            bad = [c for c in cues if not c.isalpha()]
            if bad:
                raise ValueError(f"cue words must be single words of letters; sense {name!r} has {bad[:3]}")
        a, b = (set(c.lower() for c in cues) for cues in v.values())
        if a & b:
            raise ValueError(f"cue words shared by both senses: {sorted(a & b)[:5]}")
        return {name: [c.lower() for c in cues] for name, cues in v.items()}


class WordSenseSpec(Section):
    lexicon: dict[str, WordSenseEntry] = Field(default_factory=lambda: {w: WordSenseEntry(**e) for w, e in DEFAULT_LEXICON.items()})
    """Ambiguous words and their sense cues (default: the built-in lexicon in probes/lexicon.py)."""
    window_words: int = Field(15, ge=1)
    """Words on each side of an occurrence searched for cue words."""
    max_per_word: int = Field(40, ge=2)
    """At most this many occurrences per word (drawn at random, up to half per sense when both have enough)."""
    min_per_class: int = Field(20, ge=2)
    """A sense (or resolved) target needs at least this many examples of each class, else it is skipped with a reason."""
    balance_resolved: bool = True
    """Resolved-vs-unresolved uses, per word, equally many of each, so word identity carries no information about it."""

    @field_validator("lexicon")
    @classmethod
    def _words(cls, v):
        bad = [w for w in v if not w.isalpha()]
        if bad:
            raise ValueError(f"lexicon words must be single words of letters, got {bad[:3]}")
        if not v:
            raise ValueError("the lexicon is empty; give at least one word or drop word_sense from probes.tasks")
        return {w.lower(): e for w, e in v.items()}


class UrlPositionSpec(Section):
    max_urls_per_doc: int = Field(2, ge=1)
    """At most this many URLs per document (drawn at random), so that examples spread over many documents."""


class ProbesConfig(Section):
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
    max_documents: int | None = Field(20000, ge=1)
    """Scan at most this many documents of the corpus for task examples (None: all of them)."""
    prefix_tokens: int = Field(32, ge=0)
    """Tokens of the same document the model sees before the first task token of each probe window."""
    folds: int = Field(5, ge=2)
    """Cross-validation folds, grouped by document."""
    n_bootstrap: int = Field(1000, ge=50)
    """Document-level bootstrap replicates for intervals and paired tests."""
    n_controls: int = Field(5, ge=1)
    """Random matched groups and random subspaces per probed group."""
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
    url_position: UrlPositionSpec = UrlPositionSpec()
    word_sense: WordSenseSpec = Field(default_factory=WordSenseSpec)

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
            raise ValueError("give at least one task (url_position, word_sense)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _sizes(self):
        if self.min_group_size > self.max_group_size:
            raise ValueError(f"min_group_size ({self.min_group_size}) must be <= max_group_size ({self.max_group_size})")
        return self
