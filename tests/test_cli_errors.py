"""Bad configuration ends with exit code 2 and one line naming the field: never a traceback."""

import subprocess
import sys

import pytest

from experiments.cli import apply_override, build_config, read_yaml
from experiments.config import ExperimentConfig
from sources.config import ModelSpec
from sources.errors import ConfigError
from sources.models import load_model


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, field, fragment",
    [
        ("model: [unclosed", "config", "not valid YAML at line 1"),
        ("", "config", "is empty"),
        ("- a\n- b\n", "config", "must hold a mapping"),
        ("modle:\n  name: x\n", "modle", "unknown key"),
        ("cooc:\n  treshold: 1\n", "cooc.treshold", "unknown key"),
        ("hook:\n  layer: -3\n", "hook.layer", "greater than or equal to 0"),
        ("hook:\n  site: resid_mid\n", "hook.site", "'resid_pre', 'resid_post', 'mlp_out' or 'attn_out'"),
        ("data:\n  context_len: many\n", "data.context_len", "valid integer"),
        ("model:\n  dtype: float8\n", "model.dtype", "float32"),
        ("sae:\n  release: gpt2-small-res-jb\n", "sae", "needs sae.id"),
        ("cooc:\n  threshold: -1\n", "cooc.threshold", "greater than or equal to 0"),
    ],
)
def test_bad_configs_name_the_field_and_what_is_allowed(tmp_path, text, field, fragment):
    with pytest.raises(ConfigError) as exc:
        build_config(ExperimentConfig, write(tmp_path, text))
    assert exc.value.field == field
    assert fragment in exc.value.message


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_yaml(tmp_path / "nope.yaml")


def test_set_overrides_nested_values_and_rejects_malformed_assignments():
    data = {"cooc": {"alpha": 0.05}}
    apply_override(data, "cooc.alpha=0.01")
    apply_override(data, "hook.layer=3")
    assert data == {"cooc": {"alpha": 0.01}, "hook": {"layer": 3}}
    with pytest.raises(ConfigError, match="not of the form"):
        apply_override(data, "cooc.alpha")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override(data, "cooc.alpha.x=1")


def test_the_default_config_is_valid():
    cfg = build_config(ExperimentConfig, "experiments/configs/default.yaml")
    assert cfg.model.name == "smollm2-135m" and cfg.hook.layer == 15


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("gpt5-nano", "unknown model 'gpt5-nano'"),
        ("missing/file.gguf", "GGUF file missing/file.gguf does not exist"),
    ],
)
def test_unknown_models_are_clear_errors(name, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_model(ModelSpec(name=name))


def test_the_entry_point_exits_2_with_one_line_and_no_traceback(tmp_path):
    bad = write(tmp_path, "hook:\n  layer: 999\nmodel:\n  name: not-a-model\n")
    res = subprocess.run([sys.executable, "-m", "experiments.steer", str(bad), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: model.name: unknown model 'not-a-model'")
    assert "Traceback" not in res.stderr


def test_an_sae_path_or_train_spec_replaces_the_builtin_default(tmp_path):
    cfg = build_config(ExperimentConfig, write(tmp_path, "sae:\n  path: some/dir\n"))
    assert cfg.sae.builtin is None and cfg.sae.path == "some/dir"
    cfg = build_config(ExperimentConfig, "experiments/configs/default.yaml", ["sae.train.d_sae=64"])
    assert cfg.sae.builtin is None and cfg.sae.train.d_sae == 64
    with pytest.raises(ConfigError, match="exactly one SAE source"):
        build_config(ExperimentConfig, write(tmp_path, "sae:\n  path: a\n  train: {}\n"))
