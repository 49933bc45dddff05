"""sources.sae_training and python -m experiments.train_sae on tiny models."""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sources.config import DataSpec, HookSpec, SAESpec, StreamSpec, TrainSpec
from sources.errors import ConfigError
from sources.sae_quality import SAEQuality, evaluate_sae, heldout_data
from sources.sae_training import shuffled_activation_batches, train_sae
from sources.saes import check_compatible, load_sae, load_sae_dir
from sources.stream import iter_activation_batches
from tests.tiny import tiny_corpus_file, tiny_hf_model, tiny_model, tiny_tokenizer

HOOK = HookSpec(layer=1, site="resid_post")
STREAM = StreamSpec(batch_size=16, cache=True, progress=False)
EVAL_TOKENS = 24 * 16


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Activation and SAE caches in a temporary folder for this module."""
    old = os.environ.get("COOC_CACHE")
    path = tmp_path_factory.mktemp("cache")
    os.environ["COOC_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("COOC_CACHE", None)
    else:
        os.environ["COOC_CACHE"] = old


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus_file(tmp_path_factory.mktemp("corpus"), n_docs=40)


@pytest.fixture(scope="module")
def data(corpus):
    return DataSpec(source="jsonl", path=str(corpus), context_len=24, max_tokens=24 * 200)


@pytest.fixture(scope="module")
def trained(cache, model, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "topk"
    spec = TrainSpec(d_sae=64, k=4, training_tokens=128 * 200, batch_size=128, lr=3e-3, seed=0)
    quality = train_sae(spec, model, HOOK, data, STREAM, out, progress=False, eval_tokens=EVAL_TOKENS)
    return out, quality, spec


def short_spec(**kw) -> TrainSpec:
    return TrainSpec(**{"d_sae": 32, "k": 4, "training_tokens": 128 * 20, "batch_size": 128, "lr": 3e-3, **kw})


def test_training_a_tiny_topk_sae_explains_most_variance_with_exactly_k_latents_per_token(trained):
    _, quality, spec = trained
    assert quality.explained_variance > 0.6
    assert quality.l0 == spec.k
    assert quality.dead_fraction < 0.5
    assert quality.n_tokens > 0


def test_the_saved_folder_holds_an_inference_sae_that_load_sae_dir_loads_and_check_compatible_accepts(trained, model):
    out, quality, spec = trained
    assert {"cfg.json", "sae_weights.safetensors", "train_config.json", "quality.json", "train_stats.json"} <= {p.name for p in out.iterdir()}
    assert not out.with_name(out.name + ".tmp").exists()
    sae = load_sae_dir(out)
    check_compatible(sae, model, HOOK)
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.k == spec.k and sae.cfg.d_sae == spec.d_sae
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.metadata.model_name == model.name
    assert sae.cfg.metadata.context_size == 24
    assert sae.cfg.normalize_activations == "none"  # the training-time scaling is folded into the weights
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(spec.d_sae), atol=1e-5, rtol=0)
    assert SAEQuality.from_dict(json.loads((out / "quality.json").read_text())) == quality
    assert json.loads((out / "train_config.json").read_text())["sae"]["train"] == spec.model_dump()
    assert json.loads((out / "train_stats.json").read_text())["training_tokens"] >= spec.training_tokens


def test_the_saved_sae_on_raw_activations_reproduces_the_quality_it_reports(trained, model, data):
    out, quality, _ = trained
    again = evaluate_sae(load_sae_dir(out), model, HOOK, heldout_data(data, EVAL_TOKENS), STREAM, progress=False)
    for name, value in quality.to_dict().items():
        assert getattr(again, name) == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_a_width_mismatched_sae_is_a_config_error_naming_d_in_and_d_model(trained):
    wider = tiny_model("llama", d_model=48)
    with pytest.raises(ConfigError) as err:
        check_compatible(load_sae_dir(trained[0]), wider, HOOK)
    assert "d_in=32" in err.value.message and "d_model=48" in err.value.message


def test_an_sae_trained_at_another_hook_is_refused_unless_the_check_is_off(trained, model):
    sae = load_sae_dir(trained[0])
    with pytest.raises(ConfigError, match="blocks.1.hook_resid_post"):
        check_compatible(sae, model, HookSpec(layer=2, site="resid_post"))
    check_compatible(sae, model, HookSpec(layer=2, site="resid_post"), check_hook=False)


def test_the_same_seed_gives_identical_weights(cache, model, data, tmp_path):
    for name in ("a", "b"):
        train_sae(short_spec(seed=7), model, HOOK, data, STREAM, tmp_path / name, progress=False, eval_tokens=48)
    a, b = (load_file(tmp_path / n / "sae_weights.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)


@pytest.mark.parametrize("architecture,saved_as", [("batchtopk", "JumpReLUSAE"), ("relu", "StandardSAE"), ("jumprelu", "JumpReLUSAE")])
def test_every_architecture_trains_and_saves_an_sae_that_loads(cache, model, data, tmp_path, architecture, saved_as):
    spec = short_spec(architecture=architecture, l1_coefficient=0.1)
    quality = train_sae(spec, model, HOOK, data, STREAM, tmp_path / "sae", progress=False, eval_tokens=48)
    sae = load_sae_dir(tmp_path / "sae")
    check_compatible(sae, model, HOOK)
    assert type(sae).__name__ == saved_as
    assert quality.n_tokens > 0 and quality.l0 >= 0


def test_the_training_batches_are_one_shuffled_pass_over_the_unmasked_activations(cache, model, data):
    small = data.model_copy(update={"max_tokens": 24 * 20})
    rows = torch.cat([b.masked_acts_ND().float() for b in iter_activation_batches(model, small, HOOK, STREAM, progress=False)])
    batches = list(shuffled_activation_batches(model, HOOK, small, STREAM, batch_size=50, seed=0, progress=False, max_epochs=1))
    got = torch.cat(batches)
    assert all(b.shape == (50, model.d_model) and b.dtype == torch.float32 for b in batches)
    assert got.shape[0] == rows.shape[0] - rows.shape[0] % 50
    assert not torch.equal(got, rows[:got.shape[0]])  # shuffled
    # the yielded rows are a sub-multiset of the stream's rows (equal prefixes give equal rows)
    stream_rows = Counter(r.numpy().tobytes() for r in rows)
    yielded = Counter(r.numpy().tobytes() for r in got)
    assert not yielded - stream_rows


def test_a_session_with_a_train_spec_trains_once_then_reuses_the_cached_sae(cache, model, data, monkeypatch):
    from sources import session as sess
    from sources.config import ModelSpec

    spec = SAESpec(builtin=None, train=short_spec(seed=3))
    with pytest.raises(ConfigError, match="not been trained yet"):  # loading never trains: the session decides
        load_sae(spec, model, HOOK, data)
    monkeypatch.setattr(sess, "load_model", lambda spec, progress=True: model)
    monkeypatch.setattr(sess, "_CACHE", {})
    monkeypatch.setattr(sess, "_MODELS", {})
    specs = dict(model=ModelSpec(name="tiny", device="cpu"), sae=spec, hook=HOOK, data=data, stream=STREAM)
    sae = sess.open_session(**specs, progress=False).sae
    assert sae.cfg.d_sae == 32

    def fail(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(sess, "train_sae", fail)
    monkeypatch.setattr(sess, "_CACHE", {})
    again = sess.open_session(**specs, progress=False).sae
    torch.testing.assert_close(again.W_dec, sae.W_dec)


def test_a_k_larger_than_the_dictionary_is_a_config_error(model, data, tmp_path):
    with pytest.raises(ConfigError, match="sae.train.k"):
        train_sae(TrainSpec(d_sae=8, k=16), model, HOOK, data, STREAM, tmp_path / "x", progress=False)


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    tiny_hf_model("llama").save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def write_config(path, model_name, corpus, **changes):
    cfg = {
        "model": {"name": str(model_name), "dtype": "float32", "device": "cpu"},
        "hook": {"layer": 1, "site": "resid_post"},
        "sae": {"train": {"d_sae": 32, "k": 4, "training_tokens": 2560, "batch_size": 128, "lr": 0.003}},
        "data": {"source": "jsonl", "path": str(corpus), "context_len": 24, "max_tokens": 2400},
        "stream": {"batch_size": 16, "cache": True},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        if value is None:
            cfg[section].pop(name)
        else:
            cfg[section][name] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(argv, capsys):
    from experiments.train_sae import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


def test_the_command_writes_a_loadable_sae_and_prints_the_quality_table(cache, model_dir, corpus, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", model_dir, corpus)
    code, out = run_cli([config, "--out", tmp_path / "sae", "--eval-dtype", "same", "--eval-tokens", 96, "--quiet"], capsys)
    assert code == 0, out.err
    assert "CE loss recovered" in out.out and "explained variance" in out.out
    assert load_sae_dir(tmp_path / "sae").cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    recorded = json.loads((tmp_path / "sae" / "train_config.json").read_text())
    assert recorded["model"]["name"] == str(model_dir) and recorded["sae"]["train"]["k"] == 4


@pytest.mark.parametrize("change,field", [
    ({"model__name": "no-such-model"}, "model.name"),
    ({"hook__layer": 99}, "hook.layer"),
    ({"sae__train": None}, "sae.train"),
    ({"hook__site": "resid_mid"}, "hook.site"),
])
def test_a_bad_model_hook_or_missing_train_spec_exits_2_with_one_line(model_dir, corpus, tmp_path, capsys, change, field):
    config = write_config(tmp_path / "c.yaml", model_dir, corpus, **change)
    code, out = run_cli([config, "--out", tmp_path / "sae", "--quiet"], capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), out.err
    assert not (tmp_path / "sae").exists()
