"""Configuration of the interventions stage (the ``interventions:`` section of an experiment config).

Every field is documented in docs/interventions.md. Defaults are sized for the CPU default run
(SmolLM2-135M, a few groups, 1,536 evaluated positions over 65-78 documents per group); raise ``max_tokens``,
``top_n``, ``n_controls`` and ``max_members`` on a GPU.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sources.config import DType, Section, Seed, group_ids_or_auto, positive_numbers

from interventions.modes import MODES
from probes.tasks import TASKS

Mode = Literal[tuple(MODES)]  # type: ignore[valid-type]
"""Ablation modes, the names of :data:`interventions.modes.MODES`. SAE-latent modes (zero, mean, clamp, resample)
edit latents and keep the SAE error term; subspace modes (project_out, mean_project) edit the residual directly."""

Effect = Literal["sqrt_kl_per_norm", "ce_per_norm", "margin_per_norm", "kl", "ce", "margin"]
TaskFamily = Literal[tuple(TASKS)]  # type: ignore[valid-type]
"""A registered probe task (probes.tasks.TASKS)."""
SteerDirection = Literal["pc1", "decoder_mean", "decoder_top"]


class SteeringConfig(Section):
    """Steering dose-response: add alpha * v along a unit direction v of each group."""

    enabled: bool = True
    alphas: list[float] = Field(default_factory=lambda: [-4.0, -1.0, 1.0, 4.0])
    """The alpha grid (0 is allowed: it must reproduce the clean model and is checked by the tests)."""
    units: Literal["group_norm", "resid_norm", "absolute"] = "group_norm"
    """alpha is in units of the group's mean reconstruction norm at its firing tokens (group_norm),
    of the mean residual norm at the hook (resid_norm), or absolute."""
    directions: list[SteerDirection] = Field(default_factory=lambda: ["pc1"])
    """pc1: first principal direction of the group's reconstructions sum_i a_i W_dec[i] at its firing tokens;
    decoder_mean: normalised activation-weighted mean of the members' decoder rows;
    decoder_top: decoder row of the member writing the most norm."""
    positions: Literal["all", "fires"] = "all"
    """Steer at every content token, or only where the group fires."""
    n_random: int = Field(1, ge=0)
    """Random unit directions (same alpha, hence same norm) per alpha as the steering control."""

    @field_validator("alphas")
    @classmethod
    def _grid_not_empty(cls, v):
        if not v:
            raise ValueError("the alpha grid is empty; give at least one value, e.g. [-4, -1, 1, 4], "
                             "or set interventions.steering.enabled: false")
        return v

    @field_validator("directions")
    @classmethod
    def _directions_not_empty(cls, v):
        if not v:
            raise ValueError("give at least one steering direction (pc1, decoder_mean, decoder_top)")
        return list(dict.fromkeys(v))


class TaskEffectsConfig(Section):
    """Task effects: how an intervention degrades a linear readout of a probe task at read_layer."""

    enabled: bool = True
    """Measure task effects when the probes stage has built task examples (OUT/probes/examples.csv) and a
    read_layer is set; a group that fires on no task token of a task gets no rows for it."""
    tasks: list[TaskFamily] | None = None
    """Probe task families to use (registered in probes.tasks: url_position, word_sense, quotation); None: every
    family the probes stage built.
    A family listed here must have examples in OUT/probes/examples.csv."""
    groups: Literal["all", "probe"] = "all"
    """Which evaluated groups get task effects: all, or probe: only the groups chosen as most enriched for a probe task
    (probe_groups, with groups: auto or sample), each read on every task family (the other families show how specific
    its effect is). With probe, a sample's groups cost only their model effects, the population table has no task
    questions, and there are no task effects at all when no group was chosen for a task."""
    max_docs: int = Field(50, ge=1)
    """Documents per group and task family: one probe window from each (a seeded random one of the document's windows
    where the group fires on a task token), documents in seeded random order. One window per document caps what any
    document contributes; the task effects' intervals resample these documents."""
    folds: int = Field(5, ge=2)
    """Document-grouped folds of the cross-fitted readout: each task token is read by a readout fitted on the
    other folds' documents (fewer when a task has fewer documents)."""
    l2: list[float] = Field(default_factory=lambda: [1.0, 10.0, 100.0, 1000.0, 10000.0])
    """L2 strengths tried for the readout (ridge alpha; logistic C = 1 / l2; standardised features), chosen per
    outer fold by an inner document-grouped 3-fold CV. A single value fixes it."""
    steering: bool = True
    """Also read the task along the steering alpha grid (the steering arms run on the task windows too)."""
    amnesic: bool = True
    """Also the amnesic readout (effect probe_amnesic:<target>): a readout refitted on each ablation arm's edited
    residuals (cross-fitted by document over the evaluated windows) minus the same refit on the clean residuals: is
    the information gone, or only moved away from where the fixed clean readout looks?"""

    logit: bool = True
    """Also the logit-level task effect (effect probe_logit:<target>): at each task token, the drop of the logit
    difference between the continuations whose clean logit correlates most and least with the target (chosen on the
    readout's other folds), signed by the token's own target value (interventions.tasks.LogitContrast). The task
    windows' arms then run to the logits instead of stopping at read_layer."""
    logit_tokens: int = Field(8, ge=1)
    """Continuations on each side of the logit-level contrast."""

    @model_validator(mode="before")
    @classmethod
    def _old_budget(cls, v):
        if isinstance(v, dict) and "max_tokens" in v:
            raise ValueError("max_tokens (window tokens per group) was replaced by max_docs (documents per group, one "
                             "window each); write max_docs: 50 instead")
        return v

    @field_validator("l2", mode="before")
    @classmethod
    def _l2(cls, v):
        return positive_numbers(v)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v):
        if v is not None and not v:
            raise ValueError(f"the task list is empty; give some of {', '.join(TASKS)}, null for every task "
                             "the probes stage built, or set interventions.tasks.enabled: false")
        return None if v is None else list(dict.fromkeys(v))


class LogitDiffSpec(Section):
    """One entry of interventions.logit_diffs (name -> {targets, foils}): mean target logit minus mean foil logit."""

    targets: list[str]
    """Token strings (each must be one token of the model's tokenizer, e.g. "/" or " com"), averaged."""
    foils: list[str]
    """Token strings the targets are compared with, averaged."""

    @field_validator("targets", "foils")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("give at least one token string")
        return v


class PopulationConfig(Section):
    """The pre-registered sample of groups evaluated with groups: sample (interventions.population)."""

    n_groups: int | None = Field(30, ge=1)
    """Groups drawn, allocated to the strata (structure label x size bin) in proportion to their sizes, at least one
    per stratum when there are enough; None: every group (a census)."""
    size_bins: list[int] = Field(default_factory=lambda: [2, 3, 6, 11, 21])
    """Lower edges of the size strata (2, 3-5, 6-10, 11-20, 21+ by default)."""
    @field_validator("size_bins")
    @classmethod
    def _bins(cls, v):
        if not v or any(int(b) < 1 for b in v) or len(set(v)) != len(v):
            raise ValueError("give distinct group sizes >= 1, e.g. [2, 3, 6, 11, 21]")
        return sorted(int(b) for b in v)


class InterventionsConfig(Section):
    """Ablation and steering of co-occurrence groups vs single latents vs matched controls."""

    enabled: bool = True
    """Run the stage in python -m experiments.steer."""
    groups: Literal["auto", "sample"] | list[str] = "auto"
    """auto: the top_n groups of OUT/cooc/groups.csv ranked by rank_by; sample: a seeded sample of groups stratified by
    structure label and size (population; the stage then also reports the fractions of groups that are better units,
    OUT/interventions/population.csv); either followed by the probes stage's most enriched groups per task
    (probe_groups); or explicit group ids (e.g. [g1a2b3c4d5e])."""
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    """With groups: sample, how many groups and how they are stratified."""
    top_n: int = Field(3, ge=1)
    """How many groups with groups: auto."""
    rank_by: str = "group_size"
    """Numeric column of groups.csv to rank groups by (descending) with groups: auto."""
    min_size: int = Field(2, ge=2)
    """With groups: auto or sample, only groups with at least this many members (also for the probe groups)."""
    probe_groups: int = Field(1, ge=0)
    """With groups: auto or sample, also the probe_groups most task-enriched groups the probes stage selected for
    each task (OUT/probes/groups.csv), after the top_n or the sample; 0: none. These are the groups whose task effects
    say the most (e.g. the URL group). A probe group outside a sample is evaluated but not counted in the population's
    fractions (it was chosen, not drawn)."""
    modes: list[Mode] = Field(default_factory=lambda: ["zero", "project_out"])
    """Ablation modes to run (zero, mean, clamp, resample, project_out, mean_project); the first is the verdict's
    primary mode."""
    clamp_value: float = 5.0
    """Value the clamp mode sets every edited latent to, in clamp_units."""
    clamp_units: Literal["mean_activation", "absolute"] = "mean_activation"
    """mean_activation: clamp_value times the latent's mean activation over the tokens where it fires."""
    max_members: int | None = Field(None, ge=1)
    """Single-latent arms per group: None (default) tries every member, so the best single latent is chosen among
    all of them (per mode and effect, on the other half of the documents); a number keeps the members writing the
    most norm at the group's tokens (cheaper, and a weaker best single)."""
    n_controls: int = Field(4, ge=1)
    """Draws per group and mode of each matched control (co-firing latents, random spans, random directions, random
    latent groups). Each bootstrap replicate resamples the draws too, so the comparison is against the control's
    distribution, not against a few fixed draws."""
    n_best_splits: int = Field(10, ge=1)
    """Random document halvings the best single member is cross-fitted over (chosen on one half, scored on the other,
    both ways); its sums are averaged over them, so the comparison does not hang on one split."""
    n_splits: int = Field(2, ge=0)
    """Random splits of the members into complementary halves per mode: the non-additivity test compares the group
    with the sum of its two halves' effects, besides the sum of its members' (0: no halves)."""
    additivity_effect: Literal["margin"] = "margin"
    """The signed effect of the pre-specified non-additivity test (the group's effect vs the sum of its members'
    effects on the same tokens, in the primary mode, which must be a latent mode): margin, the drop of the clean top-1
    vs top-2 logit margin (logit-level, so effects that add in the logits add in it; CE does not: log-softmax
    curvature alone makes it superadditive)."""
    evaluate_on: Literal["heldout", "discovery", "all"] = "heldout"
    """Documents the pool (evaluation contexts, firing rates, means) is drawn from: heldout (default) keeps them apart
    from the discovery documents the groups were found on (data.heldout_fraction)."""
    pool_tokens: int = Field(40_000, ge=1)
    """Tokens of the (cached) activation stream of the evaluate_on documents scanned for contexts where each group
    fires, firing rates and mean activations."""
    max_tokens: int = Field(1536, ge=1)
    """Evaluated positions per group: contexts in which the group fires, one per document first, each counted from
    the group's first firing token in it (the earlier positions are the clean pass's in every arm at the group's
    tokens) to its cut (span_tokens, tail_tokens). On the default this reaches 65-78 documents per group."""
    max_doc_tokens: int | None = Field(256, ge=1)
    """At most this many evaluated positions per document and group (a document's first context is always kept,
    then further contexts while they fit), so that no document dominates a group's evaluation; None: no cap."""
    span_tokens: int | None = Field(24, ge=1)
    """Each evaluation context is cut at most this many tokens after the group's first firing token in it (None:
    no such cut): a context where the group fires early and again late then costs no more than others, and the
    budget spreads over more documents."""
    tail_tokens: int | None = Field(16, ge=1)
    """Each evaluation context is cut this many tokens after the group's last firing token (None: whole
    contexts). Later tokens cannot change the effect at the group's tokens; they only add collateral tokens."""
    min_docs: int = Field(5, ge=2)
    """Fewer evaluation documents than this: the group gets no verdict (insufficient data)."""
    start_at_hook: bool = True
    """Every arm's pass skips the blocks before the hook and starts from the clean pass's activations there (the
    same for every arm; nnsight's Envoy.skip), which gives the full pass's logits up to float rounding (tested) for
    resid_post and resid_pre hooks; false runs every arm's whole forward (the reference path, e.g. for benchmarks)."""
    reuse_prefix: bool = True
    """Every arm's pass computes only the positions from its first edited one on, over the clean pass's keys and
    values of the earlier positions (transformers' cache; in a causal model nothing before the first edit changes),
    which gives the full pass's logits up to float rounding (tested on llama, gemma3 and gpt2); arms are batched in
    order of their first edited position so that a batch shares most of its prefix. false: every position is
    recomputed (the reference path)."""
    batch_size: int = Field(16, ge=1)
    """Sequences per forward pass (arms x contexts stacked along the batch dimension)."""
    dtype: DType | None = None
    """Computation dtype of this stage's forward passes (the pool's stream, the clean passes, every arm); None: the
    experiment's model.dtype. Edits, SAE encodings, readouts and effects stay float32; bfloat16 only changes what the
    model computes in. Its agreement with float32 on the default is measured in docs/interventions.md."""
    seed: Seed | None = None
    """Seed for context sampling, controls and the bootstrap; None uses the experiment's seed."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """Significance level: BH false discovery rate and 1 - confidence of the intervals."""
    n_boot: int = Field(1000, ge=100)
    """Bootstrap replicates (resampling whole documents)."""
    primary_effect: Effect = "sqrt_kl_per_norm"
    """Effect on which the verdict is decided (at the group's firing tokens, in the first mode).
    sqrt_kl_per_norm: sqrt(2 mean KL) / RMS edit norm, fair between edits of different size (see docs)."""
    read_layer: int | Literal["auto"] | None = "auto"
    """Later layer whose residual stream (resid_post) is read: its relative change (effect read) and the task
    readouts (tasks:). auto: min(hook.layer + 2, last layer), none if the hook is already at the last layer's
    resid_post; None: off (no read or task effects)."""
    steering: SteeringConfig = Field(default_factory=SteeringConfig)
    logit_diffs: dict[str, LogitDiffSpec] = Field(default_factory=dict)
    """Targeted logit differences measured at every scored token (effect logit_diff:<name>): name -> {targets:
    [...], foils: [...]}, e.g. url: {targets: ["/", "."], foils: [" the", " and"]}. Empty: only the clean model's
    own top-1 vs top-2 margin (effect margin)."""
    tasks: TaskEffectsConfig = Field(default_factory=TaskEffectsConfig)

    @field_validator("read_layer")
    @classmethod
    def _read_layer(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and v < 0:
            raise ValueError(f"a layer index is >= 0, got {v}; or give auto or null")
        return v

    @field_validator("logit_diffs")
    @classmethod
    def _ld_names(cls, v):
        bad = [k for k in v if not k or ":" in k or k.strip() != k]
        if bad:
            raise ValueError(f"logit_diffs names must be non-empty, without ':' or surrounding spaces, got {bad[0]!r}")
        return v

    @field_validator("modes")
    @classmethod
    def _modes_not_empty(cls, v):
        if not v:
            raise ValueError(f"give at least one mode ({', '.join(MODES)})")
        return list(dict.fromkeys(v))

    @field_validator("groups")
    @classmethod
    def _ids_not_empty(cls, v):
        return group_ids_or_auto(v)

    @model_validator(mode="after")
    def _clamp_needs_value(self):
        if "clamp" in self.modes and self.clamp_units == "mean_activation" and self.clamp_value < 0:
            raise ValueError("clamp_value must be >= 0 with clamp_units: mean_activation")
        return self
