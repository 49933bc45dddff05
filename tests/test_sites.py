"""Layer addressing is architecture-independent and pinned for every family we claim."""

import pytest
import torch

from sources import sites
from sources.config import HookSpec
from sources.errors import ConfigError
from sources.stream import hook_activations
from tiny import tiny_model

FAMILIES = ["llama", "gemma3", "gpt2"]

EXPECTED_PATHS = {
    "llama": {"resid_pre": "model.layers.1", "resid_post": "model.layers.1", "attn_out": "model.layers.1.self_attn", "mlp_out": "model.layers.1.mlp"},
    "gemma3": {"resid_pre": "model.layers.1", "resid_post": "model.layers.1",
               "attn_out": "model.layers.1.post_attention_layernorm", "mlp_out": "model.layers.1.post_feedforward_layernorm"},
    "gpt2": {"resid_pre": "transformer.h.1", "resid_post": "transformer.h.1", "attn_out": "transformer.h.1.attn", "mlp_out": "transformer.h.1.mlp"},
}


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


def test_each_site_maps_to_the_pinned_module_path(model):
    for site, path in EXPECTED_PATHS[model.family if model.family != "gemma3" else "gemma3"].items():
        assert sites.resolve(model.hf, 1, site).module == path
    assert sites.resolve(model.hf, 1, "resid_pre").io == "input"
    assert sites.resolve(model.hf, 1, "resid_post").hook_name == "blocks.1.hook_resid_post"


def test_resid_sites_match_the_models_own_hidden_states(model):
    ids = torch.randint(4, 290, (2, 12))
    with torch.no_grad():
        hidden = model.hf(ids, output_hidden_states=True).hidden_states
    for layer in range(model.n_layers - 1):  # the last hidden state includes the final norm in some families
        post = hook_activations(model, ids, HookSpec(layer=layer, site="resid_post"))
        pre = hook_activations(model, ids, HookSpec(layer=layer, site="resid_pre"))
        torch.testing.assert_close(post, hidden[layer + 1], rtol=0, atol=0)
        torch.testing.assert_close(pre, hidden[layer], rtol=0, atol=0)


def test_attention_and_mlp_outputs_sum_to_the_residual_update(model):
    ids = torch.randint(4, 290, (2, 12))
    acts = {s: hook_activations(model, ids, HookSpec(layer=1, site=s)) for s in sites.SITES}
    torch.testing.assert_close(acts["resid_pre"] + acts["attn_out"] + acts["mlp_out"], acts["resid_post"], rtol=1e-5, atol=1e-5)


def test_a_layer_out_of_range_names_the_valid_range(model):
    with pytest.raises(ConfigError, match=r"hook.layer: layer 7 is out of range; this model has layers 0..2"):
        sites.resolve(model.hf, 7, "resid_post")


def test_an_unknown_site_lists_the_allowed_sites(model):
    with pytest.raises(ConfigError, match="allowed: resid_pre, resid_post, mlp_out, attn_out"):
        sites.resolve(model.hf, 0, "resid_mid")


def test_blocks_returning_a_tuple_or_a_tensor_both_give_the_hidden_states():
    h = torch.ones(2, 3)
    assert sites.first_tensor((h, None)) is h
    assert sites.first_tensor(h) is h


def test_an_unsupported_architecture_is_a_clear_error():
    class Fake(torch.nn.Module):
        class config:
            model_type = "mamba"

    with pytest.raises(ConfigError, match="architecture 'mamba' is not supported"):
        sites.family_of(Fake())
