"""Shared layer: language models, SAEs, corpora and the activation stream that joins them.

Data flows one way: ``sources`` -> ``cooc`` -> ``subspaces`` -> ``probes``/``interventions`` -> reports.
Nothing in this package imports from the stage packages.
"""
