"""Model + SAE loaded once per process for a config, checked against each other.

The session is where sources' pieces meet: it loads the model (sources.models), trains the configured SAE
on demand when a ``sae.train`` spec has no trained folder yet (sources.sae_training), loads it
(sources.saes) and streams its latents over the corpus (sources.stream).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from typing import Any, Iterator

import numpy as np
import torch

from sources.config import DataSpec, HookSpec, ModelSpec, SAESpec, StreamSpec
from sources.corpora import special_ids
from sources.errors import ConfigError
from sources.models import LoadedModel, load_model
from sources.sae_training import train_sae
from sources.sae_view import SAEView
from sources.saes import load_sae, trained_sae_dir
from sources.stream import LatentBatch, hook_activations, iter_latents

log = logging.getLogger(__name__)

_CACHE: dict[str, Any] = {}
"""Loaded SAEs by (model, SAE, hook); sessions share them (and the models) but each has its own data and stream."""
_MODELS: dict[str, LoadedModel] = {}


@dataclass
class Session:
    model: LoadedModel
    sae: Any
    hook: HookSpec
    data: DataSpec
    stream: StreamSpec

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    def view(self, threshold: float = 0.0, use_sae_threshold: bool = True) -> SAEView:
        """The session's SAE seen through :class:`sources.sae_view.SAEView`, firing above ``max(threshold, θ)``."""
        return SAEView(self.sae, threshold, use_sae_threshold)

    def theta_F(self) -> np.ndarray | None:
        """Per-latent JumpReLU threshold θ of the SAE, or None."""
        return SAEView(self.sae).theta_F

    def activations(self, tokens_BL) -> torch.Tensor:
        """Activations ``[B, L, D]`` at the session's hook for tokens ``[B, L]`` (a forward pass stopped there)."""
        t = torch.as_tensor(tokens_BL)
        return hook_activations(self.model, t[None] if t.ndim == 1 else t, self.hook)

    def tokens(self, text: str) -> torch.Tensor:
        """``text`` as token ids ``[1, L]``, BOS first, as every context of the stages starts (EOS for a model
        without a BOS token, as GPT-2)."""
        bos, _, _ = special_ids(self.model.tokenizer)
        ids = self.model.tokenizer(text, add_special_tokens=False).input_ids
        return torch.tensor([[bos, *ids]], dtype=torch.long)

    def latent_batches(self, progress: bool = True, shard: tuple[int, int] | None = None,
                       part: str | None = None) -> Iterator[LatentBatch]:
        """SAE latents over the session's corpus (``shard=(rank, world_size)``: only that rank's documents;
        ``part``: discovery, heldout or all documents instead of the session's data.part)."""
        data = self.data if part is None else self.data.model_copy(update={"part": part})
        return iter_latents(self.model, self.sae, data, self.hook, self.stream, progress, shard)


def _spec(cls, value, field: str):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls.model_validate(value)
    raise ConfigError(field, f"give a {cls.__name__} or a dict of its fields, got {type(value).__name__}")


def shared_model(spec: ModelSpec, progress: bool = True) -> LoadedModel:
    """The model of ``spec``, loaded once per process (sessions share it)."""
    key = json.dumps(spec.model_dump(), sort_keys=True)
    if key not in _MODELS:
        _MODELS[key] = load_model(spec, progress)
    return _MODELS[key]


def with_dtype(session: Session, spec: ModelSpec, dtype: str, progress: bool = True) -> Session:
    """``session`` with its model computing in ``dtype`` (loaded once per process, like every model): the SAE, hook,
    corpus and stream stay the session's, so only the model's arithmetic changes (e.g. interventions.dtype)."""
    return replace(session, model=shared_model(spec.model_copy(update={"dtype": dtype}), progress))


def open_session(model: ModelSpec | dict | None = None, sae: SAESpec | dict | None = None, hook: HookSpec | dict | None = None,
                 data: DataSpec | dict | None = None, stream: StreamSpec | dict | None = None, *, progress: bool = True) -> Session:
    """Load (or reuse) a model and its SAE, checked against each other at ``hook``.

    Each argument is its own spec (or a dict of its fields); left out, it is the default: SmolLM2-135M, the built-in
    SAE, layer 15's resid_post, the built-in corpus. ``data`` and ``stream`` are what :meth:`Session.latent_batches`
    reads (and what an ``sae.train`` spec trains on, on demand, the first time). Models and SAEs are loaded once per
    process and shared by sessions that name the same ones.
    """
    model_spec, sae_spec, hook = _spec(ModelSpec, model, "model"), _spec(SAESpec, sae, "sae"), _spec(HookSpec, hook, "hook")
    data, stream = _spec(DataSpec, data, "data"), _spec(StreamSpec, stream, "stream")
    key = json.dumps({"model": model_spec.model_dump(), "sae": sae_spec.model_dump(), "hook": hook.model_dump()}, sort_keys=True)
    if key not in _CACHE:
        loaded = shared_model(model_spec, progress)
        if sae_spec.train is not None:
            folder = trained_sae_dir(sae_spec, loaded, hook, data)
            if not (folder / "cfg.json").exists():
                log.info("training an SAE (cached afterwards in %s)", folder)
                train_sae(sae_spec.train, loaded, hook, data, stream, folder, progress=progress,
                          eval_tokens=sae_spec.train.eval_tokens)
        _CACHE[key] = load_sae(sae_spec, loaded, hook, data)
    return Session(_MODELS[json.dumps(model_spec.model_dump(), sort_keys=True)], _CACHE[key], hook, data, stream)
