"""Shared layer: language models, SAEs, corpora and the activation stream that joins them.

Data flows one way: ``sources`` -> ``stats`` -> ``cooc``, ``subspaces`` -> ``probes`` -> ``interventions`` ->
``reports``, driven by ``experiments``. Nothing in this package imports from the packages above it.

Notebook surface (docs/api.md): :func:`open_session` (model + SAE at a hook, loaded once per process),
:class:`Session`, :func:`load_model`, :func:`load_sae`, :class:`SAEView` and :func:`fires` (the firing rule),
and the specs that name what to load. They are imported on first use, so that ``import sources.config`` (every
config section does it) does not load torch, transformers and sae_lens.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "open_session": "sources.session", "Session": "sources.session", "load_model": "sources.models",
    "load_sae": "sources.saes", "SAEView": "sources.sae_view", "fires": "sources.sae_view",
    "DataSpec": "sources.config", "HookSpec": "sources.config", "ModelSpec": "sources.config",
    "SAESpec": "sources.config", "StreamSpec": "sources.config",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sources' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
