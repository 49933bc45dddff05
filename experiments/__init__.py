"""Experiment drivers: YAML configs and the ``python -m experiments.<stage>`` entry points."""
