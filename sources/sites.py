"""Architecture-independent addressing of the residual stream: ``(layer, site)`` -> module path.

Users write ``hook: {layer: 12, site: resid_post}``; this module maps that to the module of
each supported family, so nothing else in the framework knows module names.

Sites (what is read or written):
- ``resid_pre``:  input of block ``layer`` (the residual stream before the block).
- ``resid_post``: output of block ``layer`` (first element if the block returns a tuple).
- ``attn_out``:   what the attention sub-block adds to the residual stream.
- ``mlp_out``:    what the MLP sub-block adds to the residual stream.

For Gemma 2/3 the attention and MLP outputs pass through a post-norm before being added to
the residual, so ``attn_out``/``mlp_out`` are the outputs of those post-norms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from sources.errors import ConfigError


@dataclass(frozen=True)
class Family:
    name: str
    blocks: tuple[str, ...]
    """Candidate paths of the ModuleList of decoder blocks, tried in order."""
    attn_out: str
    """Path, relative to a block, of the module whose output is added to the residual by attention."""
    mlp_out: str
    """Same for the MLP."""
    lm_head: str = "lm_head"


LLAMA = Family("llama", ("model.layers",), "self_attn", "mlp")
GEMMA = Family("gemma", ("model.layers",), "self_attn", "mlp")
GEMMA_POSTNORM = Family(
    "gemma3",
    ("model.layers", "model.language_model.layers"),
    "post_attention_layernorm",
    "post_feedforward_layernorm",
)
GPT2 = Family("gpt2", ("transformer.h",), "attn", "mlp")

FAMILIES: dict[str, Family] = {
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": LLAMA,
    "qwen3": LLAMA,
    "gemma": GEMMA,
    "gemma2": GEMMA_POSTNORM,
    "gemma3": GEMMA_POSTNORM,
    "gemma3_text": GEMMA_POSTNORM,
    "gpt2": GPT2,
}

SITES = ("resid_pre", "resid_post", "mlp_out", "attn_out")


@dataclass(frozen=True)
class SitePath:
    """Where a (layer, site) lives: a module path and whether it is that module's input or output."""

    module: str
    io: Literal["input", "output"]
    block: str
    """Path of the decoder block that holds the site (used to truncate the forward pass)."""
    hook_name: str
    """TransformerLens-style name, as sae_lens records it (blocks.{L}.hook_resid_post)."""


def family_of(model: torch.nn.Module) -> Family:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise ConfigError("model.name", f"architecture {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
    return FAMILIES[model_type]


def blocks_path(model: torch.nn.Module, family: Family | None = None) -> str:
    family = family or family_of(model)
    for path in family.blocks:
        try:
            model.get_submodule(path)
            return path
        except AttributeError:
            continue
    raise ConfigError("model.name", f"could not find the decoder blocks ({' or '.join(family.blocks)}) in this {family.name} model")


def n_layers(model: torch.nn.Module) -> int:
    return len(model.get_submodule(blocks_path(model)))


def resolve(model: torch.nn.Module, layer: int, site: str) -> SitePath:
    """Map a user's (layer, site) to a module path of ``model``, with clear errors when out of range."""
    if site not in SITES:
        raise ConfigError("hook.site", f"unknown site {site!r}; allowed: {', '.join(SITES)}")
    family = family_of(model)
    root = blocks_path(model, family)
    n = len(model.get_submodule(root))
    if not 0 <= layer < n:
        raise ConfigError("hook.layer", f"layer {layer} is out of range; this model has layers 0..{n - 1}")
    block = f"{root}.{layer}"
    hook_name = f"blocks.{layer}.hook_{site}"
    if site == "resid_pre":
        return SitePath(block, "input", block, hook_name)
    if site == "resid_post":
        return SitePath(block, "output", block, hook_name)
    sub = family.attn_out if site == "attn_out" else family.mlp_out
    return SitePath(f"{block}.{sub}", "output", block, hook_name)


def first_tensor(value):
    """Decoder blocks return a tensor in some versions and a tuple in others: take the hidden states."""
    if isinstance(value, (tuple, list)):
        return value[0]
    return value
