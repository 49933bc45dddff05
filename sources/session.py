"""Model + SAE loaded once per process for a config, checked against each other.

The session is where sources' pieces meet: it loads the model (sources.models), trains the configured SAE
on demand when a ``sae.train`` spec has no trained folder yet (sources.sae_training), loads it
(sources.saes) and streams its latents over the corpus (sources.stream).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from sources.config import DataSpec, HookSpec, StreamSpec
from sources.errors import ConfigError
from sources.models import LoadedModel, load_model
from sources.sae_training import train_sae
from sources.sae_view import SAEView
from sources.saes import load_sae, trained_sae_dir
from sources.stream import LatentBatch, iter_latents

log = logging.getLogger(__name__)

_CACHE: dict[str, "Session"] = {}
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
        """The session's SAE seen through :class:`sources.sae_view.SAEView`, firing above ``threshold`` (+ θ)."""
        return SAEView(self.sae, threshold, use_sae_threshold)

    def theta_F(self) -> np.ndarray | None:
        """Per-latent JumpReLU threshold θ of the SAE, or None."""
        return SAEView(self.sae).theta_F

    def latent_batches(self, progress: bool = True, shard: tuple[int, int] | None = None) -> Iterator[LatentBatch]:
        """SAE latents over the session's corpus (``shard=(rank, world_size)``: only that rank's contexts)."""
        return iter_latents(self.model, self.sae, self.data, self.hook, self.stream, progress, shard)


def open_session(cfg, progress: bool = True) -> Session:
    """Load (or reuse) the model and SAE of an experiment config (anything with model/hook/sae/data/stream)."""
    model_spec = cfg.model
    sae_spec = cfg.sae
    key = json.dumps({"model": model_spec.model_dump(), "sae": sae_spec.model_dump(), "hook": cfg.hook.model_dump()}, sort_keys=True)
    if key not in _CACHE:
        model_key = json.dumps(model_spec.model_dump(), sort_keys=True)
        if model_key not in _MODELS:
            _MODELS[model_key] = load_model(model_spec, progress)
        model = _MODELS[model_key]
        if sae_spec.train is not None:
            if cfg.data is None:
                raise ConfigError("sae.train", "training an SAE needs a data: section")
            folder = trained_sae_dir(sae_spec, model, cfg.hook, cfg.data)
            if not (folder / "cfg.json").exists():
                log.info("training an SAE (cached afterwards in %s)", folder)
                train_sae(sae_spec.train, model, cfg.hook, cfg.data, cfg.stream or StreamSpec(), folder, progress=progress)
        sae = load_sae(sae_spec, model, cfg.hook, cfg.data)
        _CACHE[key] = Session(model, sae, cfg.hook, cfg.data, cfg.stream)
    s = _CACHE[key]
    s.data, s.stream = cfg.data, cfg.stream
    return s
