"""Model + SAE loaded once per process for a config, checked against each other."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sources.config import DataSpec, HookSpec, ModelSpec, SAESpec, StreamSpec
from sources.models import LoadedModel, load_model
from sources.saes import load_sae

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


def open_session(cfg, progress: bool = True) -> Session:
    """Load (or reuse) the model and SAE of an experiment config (anything with model/hook/sae/data/stream)."""
    model_spec: ModelSpec = cfg.model
    sae_spec: SAESpec = cfg.sae
    key = json.dumps({"model": model_spec.model_dump(), "sae": sae_spec.model_dump(), "hook": cfg.hook.model_dump()}, sort_keys=True)
    if key not in _CACHE:
        model_key = json.dumps(model_spec.model_dump(), sort_keys=True)
        if model_key not in _MODELS:
            _MODELS[model_key] = load_model(model_spec, progress)
        model = _MODELS[model_key]
        sae = load_sae(sae_spec, model, cfg.hook, cfg.data, cfg.stream, progress=progress)
        _CACHE[key] = Session(model, sae, cfg.hook, cfg.data, cfg.stream)
    s = _CACHE[key]
    s.data, s.stream = cfg.data, cfg.stream
    return s
