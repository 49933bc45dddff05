"""Probes: what a latent group's subspace encodes, against single latents, sparse probes and matched controls.

Modules: ``config`` (the ``probes:`` section), ``tasks/`` (the task registry, one module per task), ``text`` (labels
found in text: URLs, word-sense cues), ``lexicon`` (built-in word-sense cues), ``documents`` (corpus documents as the
tasks read them), ``dataset`` (probe windows through model and SAE), ``selection`` (enrichment), ``comparison``
(arms, cross-validation, bootstrap, paired tests), ``linear`` (exact ridge/logistic probes), ``plots`` (PCA figures),
``api`` (:func:`probe`), ``stage`` (the whole stage; entry point ``experiments.probe``). See docs/probes.md.

Notebook surface (docs/api.md): :func:`probe` (any labelled tokens, any groups) and :class:`Settings`.
"""

from probes.api import probe
from probes.comparison import Settings

__all__ = ["probe", "Settings"]
