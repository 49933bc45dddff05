"""Configuration of the co-occurrence stage (the ``cooc:`` section of an experiment config).

Every field is documented in docs/cooc.md. Defaults suit a TopK SAE (a latent fires when its
activation is > 0); ``threshold: 1.5`` reproduces the reference method's binarisation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sources.config import Section


class SizeTargetSpec(Section):
    """Parameters of the reference method's size-targeted global Jaccard cut."""

    min_size: int = Field(150, ge=2)
    """Smallest accepted size of the largest connected component."""
    max_size: int = Field(200, ge=2)
    """Largest accepted size of the largest connected component."""
    iterations: int = Field(40, ge=1)
    """Bisection steps on the Jaccard threshold in [0, 1]."""

    @model_validator(mode="after")
    def _ordered(self):
        if self.min_size > self.max_size:
            raise ValueError(f"size_target.min_size ({self.min_size}) must be <= max_size ({self.max_size})")
        return self


class CoocConfig(Section):
    """Counting, scoring and grouping of co-occurring SAE latents."""

    # --- counting -------------------------------------------------------------------------
    threshold: float = Field(0.0, ge=0)
    """A latent fires at a token when its activation is > threshold (and > θ, see use_sae_threshold).
    0.0 suits TopK/ReLU SAEs; the reference method used 1.5."""
    use_sae_threshold: bool = True
    """Also apply the SAE's own per-latent JumpReLU threshold θ where the SAE has one: fires when the activation is
    > max(threshold, θ) (not threshold + θ, which counts θ twice: the JumpReLU output is already 0 below θ)."""
    d_sae: int | None = Field(None, ge=1)
    """Expected SAE width; when given, inputs of another width are refused (else taken from the input)."""
    chunk_tokens: int = Field(4096, ge=1)
    """Tokens per counting chunk when reading a file (stream batches are counted as they come)."""
    max_tokens: int | None = Field(None, ge=1)
    """Stop counting after this many (unmasked) tokens."""
    prune_below: int = Field(0, ge=0)
    """If > 0, every ``prune_every`` chunks drop stored pairs whose running count is below this.
    Bounds memory when distinct pairs exceed it, at the price of undercounting (see docs/cooc.md)."""
    prune_every: int = Field(64, ge=1)
    """Chunks between pruning passes (only used when prune_below > 0)."""

    # --- scoring --------------------------------------------------------------------------
    min_occurrences: int = Field(10, ge=1)
    """Latents firing fewer times are not tested; the test family is all pairs of the others."""
    test: Literal["auto", "document", "binomial", "hypergeometric"] = "auto"
    """One-sided test of co-occurrence above chance: document (the document-stratified null: each latent's firing
    per document kept, tokens exchangeable only within a document; needs document ids), binomial (tokens iid; fast,
    conservative), hypergeometric (tokens iid; Fisher exact, slow for frequent latents); auto: document where the
    input has document ids (the stream always has), else binomial, which the manifest and report then say. With
    the document null the token-iid binomial's edges and groups are reported beside it. See docs/cooc.md."""
    alpha: float = Field(0.05, gt=0, lt=1)
    """False discovery rate for Benjamini-Hochberg over that family."""

    # --- groups ---------------------------------------------------------------------------
    method: Literal["significant", "size_target"] = "significant"
    """significant: FDR-controlled edges + effect-size floors, components split above max_group_size.
    size_target: the reference method's single global Jaccard cut (largest component in [min, max])."""
    min_count: int = Field(5, ge=1)
    """Edge needs at least this many co-occurrences."""
    min_jaccard: float = Field(0.01, ge=0, le=1)
    """Edge needs Jaccard >= this (kept low: a hub-to-spoke pair has Jaccard ~ 1/n_spokes)."""
    min_npmi: float = Field(0.1, ge=-1, le=1)
    """Edge needs NPMI >= this."""
    min_documents: int = Field(3, ge=1)
    """Edge needs the pair to co-fire in at least this many documents (where the input has document ids), so no
    edge rests on one or two documents' idiosyncrasies."""
    max_group_size: int = Field(64, ge=2)
    """Components larger than this are split (Louvain, then stricter local Jaccard cuts), never merged."""
    size_target: SizeTargetSpec = SizeTargetSpec()
    """Parameters of method: size_target."""

    # --- replication ----------------------------------------------------------------------
    replication: bool = True
    """Re-test every edge on the held-out documents (data.heldout_fraction; a file's documents split the same way)
    under the same null, BH over the edges: replicated edges per group go into groups.csv (replication_rate)."""

    stability_replicates: int = Field(20, ge=0)
    """Document-bootstrap replicates measuring each group's membership and label stability, plus reruns with
    other Louvain seeds and resolutions (cooc.stability); 0 turns both off."""

    # --- outputs --------------------------------------------------------------------------
    write_pairs: Literal["tested", "edges", "none"] = "tested"
    """Rows of pairs.parquet: every stored tested pair, only edges, or no file."""
