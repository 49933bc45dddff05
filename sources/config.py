"""Typed configuration of the shared layer: which model, which hook, which SAE, which corpus.

Each section is a pydantic model with ``extra="forbid"`` so a misspelt key is an error that
names the key. Stage packages (``cooc``, ``probes``, ...) define their own sections; the
experiment config in :mod:`experiments.config` composes them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sources.errors import ConfigError

Site = Literal["resid_pre", "resid_post", "mlp_out", "attn_out"]
DType = Literal["float32", "bfloat16"]
Device = Literal["auto", "cpu", "cuda"]

SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
"""A seed every RNG the project uses accepts (numpy, torch and scikit-learn's random_state: 0 .. 2**32 - 1)."""
INT64_MAX = 2**63 - 1


def _plain_value(v):
    """Every integer in a config, also inside lists, fits numpy's int64 (larger ones overflow arrays and RNGs);
    no string holds a NUL character (the OS refuses it in paths with an exception, not a message)."""
    if isinstance(v, (list, tuple)):
        for x in v:
            _plain_value(x)
    elif isinstance(v, int) and not isinstance(v, bool) and not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise ValueError(f"integer {v} is out of range; give a value between {-INT64_MAX - 1} and {INT64_MAX}")
    elif isinstance(v, str) and "\x00" in v:
        raise ValueError("contains a NUL character, which no file name or id may hold")
    return v


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment,
    floats must be finite (NaN and infinities are refused where they are parsed), integers fit int64 and strings
    hold no NUL character."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _plain_values(cls, v):
        return _plain_value(v)


def group_ids_or_auto(v):
    """Validator body for a ``groups:`` field that takes ``auto`` or a non-empty list of group ids."""
    if isinstance(v, list) and not v:
        raise ValueError("the list of group ids is empty; give ids from OUT/cooc/groups.csv or auto")
    return v


def require_known_groups(field: str, ids, known, source) -> None:
    """ConfigError naming the first of ``ids`` that is not among ``known`` (the groups of ``source``, a cooc
    groups.csv); the one check behind probes.groups, interventions.groups and report.groups."""
    known = list(known)
    unknown = [str(g) for g in ids if str(g) not in set(known)]
    if unknown:
        some = ", ".join(known[:3]) or "none"
        raise ConfigError(field, f"group id {unknown[0]!r} does not exist in {source} ({len(known)} groups, e.g. "
                                 f"{some}); give ids from that file or auto")


def positive_numbers(v) -> list[float]:
    """Validator body for a grid given as one positive number or a non-empty list of them (sorted, unique)."""
    vals = [v] if isinstance(v, (int, float)) and not isinstance(v, bool) else v
    if not isinstance(vals, (list, tuple)) or not vals or not all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and a > 0 for a in vals):
        raise ValueError(f"give a positive number or a non-empty list of positive numbers, got {v!r}")
    return sorted({float(a) for a in vals})


class HookSpec(Section):
    layer: int = Field(15, ge=0)
    """Transformer block index (0-based)."""
    site: Site = "resid_post"
    """Which stream at that block: resid_pre, resid_post, mlp_out or attn_out."""


class ModelSpec(Section):
    name: str = "smollm2-135m"
    """Built-in offline alias (smollm2-135m, gemma3-270m), a Hugging Face id, a local directory or a .gguf file."""
    dtype: DType = "float32"
    """Computation dtype of the language model."""
    device: Device = "auto"
    """auto picks cuda when available, else cpu."""


class TrainSpec(Section):
    architecture: Literal["topk", "batchtopk", "relu", "jumprelu"] = "topk"
    d_sae: int = Field(4096, ge=1)
    k: int = Field(32, ge=1)
    """Active latents per token for topk/batchtopk."""
    l1_coefficient: float = Field(5.0, ge=0)
    """Sparsity penalty for relu/jumprelu."""
    training_tokens: int = Field(1_000_000, ge=1)
    batch_size: int = Field(4096, ge=1)
    lr: float = Field(4e-4, gt=0)
    seed: Seed = 0
    eval_tokens: int = Field(16_384, ge=1)
    """Held-out positions the quality after training (quality.json) is measured on, three forward passes each; not
    part of the trained SAE's cache key."""


class SAESpec(Section):
    """Exactly one of ``builtin``, ``release``, ``path`` or ``train``; giving release, path or train replaces the built-in default."""

    builtin: str | None = "default"
    """Alias of an SAE shipped with the project (``default``: SmolLM2-135M layer 15 resid_post)."""
    release: str | None = None
    """sae_lens pretrained release, e.g. gpt2-small-res-jb (needs ``id``; needs the Hub)."""
    id: str | None = None
    """sae_lens SAE id within the release, e.g. blocks.8.hook_resid_pre."""
    path: str | None = None
    """Directory in sae_lens disk format (cfg.json + sae_weights.safetensors)."""
    train: TrainSpec | None = None
    """Train an SAE on the configured model/hook/corpus (see python -m experiments.train_sae)."""
    check_hook: bool = True
    """Refuse an SAE whose recorded hook differs from the configured one."""

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, data):
        if isinstance(data, dict):
            others = [k for k in ("release", "path", "train") if data.get(k) is not None]
            if len(others) > 1:
                raise ValueError(f"give exactly one SAE source, got {others}")
            if others:
                # an explicit release/path/train replaces the built-in default (also when --set on default.yaml)
                data = {**data, "builtin": None}
            elif "builtin" in data and data["builtin"] is None:
                raise ValueError("give one SAE source: builtin, release (+ id), path or train")
            if "release" in others and not data.get("id"):
                raise ValueError("sae.release needs sae.id (the SAE id within the release)")
        return data


class DataSpec(Section):
    source: Literal["builtin", "text", "jsonl", "hf_disk", "hub"] = "builtin"
    """builtin corpus alias, plain text file(s), JSONL file(s), a dataset saved with save_to_disk, or a Hub dataset."""
    name: str = "default"
    """Built-in corpus alias or Hub dataset name."""
    path: str | None = None
    """File, glob or directory for text/jsonl/hf_disk."""
    text_field: str = "text"
    split: str = "train"
    context_len: int = Field(128, ge=2)
    """Tokens per context, BOS included."""
    max_tokens: int = Field(200_000, ge=1)
    """Stop after this many tokens (all positions, masked ones included)."""
    order: Literal["shuffled", "corpus"] = "shuffled"
    """shuffled: documents in a seeded random order (data.seed), so a token budget samples the whole corpus instead of
    its first documents; corpus: the corpus's own order."""
    seed: Seed = 0
    """Seeds the document order and the discovery / held-out split (fixed apart from the experiment's seed, so the
    split stays put when other seeds vary)."""
    shuffle_buffer: int = Field(100_000, ge=1)
    """order: shuffled draws through a buffer of this many documents: an exact shuffle of a corpus no larger than
    it, a local one of a longer (streamed) corpus."""
    max_doc_share: float = Field(0.01, gt=0, le=1)
    """No document fills more than this share of a stream's max_tokens positions (its later contexts are
    skipped), so a few long documents cannot dominate the sample; 1 turns the cap off."""
    heldout_fraction: float = Field(0.5, ge=0, lt=1)
    """Share of the documents (a seeded draw per document) in the held-out part: cooc finds groups on the discovery
    part and replicates them on the held-out part, on which probes and interventions evaluate (their
    evaluate_on). 0: no held-out part (every document is discovery)."""
    part: Literal["all", "discovery", "heldout"] = "all"
    """Which documents a stream reads. The stages set it themselves (cooc: discovery, then heldout to replicate;
    probes and interventions: their evaluate_on); it matters only to the library API (sources.open_session)."""
    holdout_every: int = Field(0, ge=0)
    """If > 0, every n-th document is held out from this stream (used for evaluation splits)."""
    holdout_only: bool = False
    """With holdout_every > 0: yield only the held-out documents instead of skipping them (evaluation split)."""


    def reading(self, part: str) -> "DataSpec":
        """This corpus read as ``part`` (discovery, heldout or all) of its documents; every document when there is
        no held-out part (heldout_fraction 0)."""
        return self.model_copy(update={"part": part if self.heldout_fraction > 0 else "all"})


class StreamSpec(Section):
    batch_size: int = Field(16, ge=1)
    """Contexts per forward pass."""
    cache: bool = False
    """Write activations to an on-disk cache that later runs reuse and interrupted runs resume."""
    progress: bool = True


class ActivationsSpec(Section):
    source: Literal["stream", "file"] = "stream"
    """stream: run model + SAE over the corpus; file: read precomputed latent activations."""
    path: str | None = None
    """For source: file, a .npz holding a scipy sparse CSR matrix [n_tokens, d_sae] of float activations."""
    documents: str | None = None
    """For source: file, a .npy int64 vector with the document id of every row of the matrix (what the document
    null of cooc.test: document needs; without it a file's tokens have no documents)."""

    @model_validator(mode="after")
    def _path_for_file(self):
        if self.source == "file" and not self.path:
            raise ValueError("activations.source: file needs activations.path (a .npz scipy CSR matrix)")
        return self
