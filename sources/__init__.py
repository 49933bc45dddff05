"""Shared layer: language models, SAEs, corpora and the activation stream that joins them.

Data flows one way: ``sources`` -> ``cooc`` -> ``subspaces`` -> ``probes``/``interventions`` -> reports.
Nothing in this package imports from the stage packages.

Notebook surface (docs/api.md): :func:`open_session` (model + SAE at a hook, loaded once per process),
:class:`Session`, :func:`load_model`, :func:`load_sae`, :class:`SAEView` and :func:`fires` (the firing rule),
and the specs that name what to load.
"""

from sources.config import DataSpec, HookSpec, ModelSpec, SAESpec, StreamSpec
from sources.models import load_model
from sources.sae_view import SAEView, fires
from sources.saes import load_sae
from sources.session import Session, open_session

__all__ = ["open_session", "Session", "load_model", "load_sae", "SAEView", "fires",
           "DataSpec", "HookSpec", "ModelSpec", "SAESpec", "StreamSpec"]
