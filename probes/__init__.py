"""Probes: what a latent group's subspace encodes, against single latents, sparse probes and matched controls.

Modules: ``config`` (the ``probes:`` section), ``lexicon`` (built-in word-sense cues), ``tasks`` (labels from
text), ``dataset`` (probe windows through model and SAE), ``selection`` (enrichment), ``targets``,
``comparison`` (arms, cross-validation, bootstrap, paired tests), ``linear`` (exact ridge/logistic probes),
``plots`` (PCA figures), ``stage`` (the whole stage; entry point ``experiments.probe``). See docs/probes.md.

Notebook surface (docs/api.md): :func:`probe` (any labelled tokens, any groups) and :class:`Settings`.
"""

from probes.api import probe
from probes.comparison import Settings

__all__ = ["probe", "Settings"]
