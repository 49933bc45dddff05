"""Fuzzed configurations fail only with ConfigError (one field, one message), never another exception."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.cli import build_config
from experiments.config import ExperimentConfig
from sources.errors import ConfigError

KEYS = ["model", "hook", "sae", "data", "stream", "cooc", "probes", "interventions", "activations", "seed", "out",
        "name", "layer", "site", "dtype", "device", "builtin", "path", "release", "id", "train", "threshold",
        "max_tokens", "context_len", "batch_size", "alpha", "method", "tasks", "groups", "modes", "d_sae", "k", "bogus"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["resid_post", "topk", "auto", "float32", "significant", "zero"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=12)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=5)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(configs)
def test_any_yaml_mapping_either_validates_or_fails_with_one_config_error(tmp_path, data):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(data) if data else "seed: 0\n")
    try:
        build_config(ExperimentConfig, path)
    except ConfigError as exc:
        assert exc.field and exc.message
        assert "\n" not in exc.message


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["cooc.alpha", "hook.layer", "data.max_tokens", "sae.path", "x.y", "seed", "model"]),
                          st.text(max_size=8)), max_size=4))
def test_any_set_override_either_validates_or_fails_with_one_config_error(overrides):
    try:
        build_config(ExperimentConfig, "experiments/configs/default.yaml", [f"{k}={v}" for k, v in overrides])
    except ConfigError as exc:
        assert exc.field and exc.message
