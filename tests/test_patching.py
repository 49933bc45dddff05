"""sources.patching: edits inside an nnsight trace agree with plain PyTorch hooks on tiny models."""

from __future__ import annotations

import pytest
import torch

from sources.config import HookSpec
from sources.patching import clean_logits, clean_logits_and_site, run_with_edits, run_with_site_edit
from sources.sites import SITES
from sources.stream import hook_activations
from tests.tiny import tiny_model

FAMILIES = ("llama", "gemma3", "gpt2")


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def tokens():
    g = torch.Generator().manual_seed(0)
    return torch.randint(4, 250, (3, 12), generator=g)


def plain_logits(model, tokens, hooks=()):
    """Logits of the bare transformers model with ``(module_path, kind, fn)`` hooks installed.

    kind "output": forward hook replacing the module's output (hidden states of a tuple);
    kind "input": forward pre-hook replacing the module's first input (positional or keyword).
    """
    handles = []
    for path, kind, fn in hooks:
        module = model.hf.get_submodule(path)
        if kind == "output":
            def out_hook(mod, args, out, fn=fn):
                if isinstance(out, tuple):
                    return (fn(out[0]), *out[1:])
                return fn(out)
            handles.append(module.register_forward_hook(out_hook))
        else:
            def pre_hook(mod, args, kwargs, fn=fn):
                if args:
                    return (fn(args[0]), *args[1:]), kwargs
                key = next(iter(kwargs))
                return args, {**kwargs, key: fn(kwargs[key])}
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            return model.hf(tokens).logits.float()
    finally:
        for h in handles:
            h.remove()


def test_clean_logits_equal_a_plain_transformers_forward(model, tokens):
    torch.testing.assert_close(clean_logits(model, tokens), plain_logits(model, tokens), atol=1e-6, rtol=0)


@pytest.mark.parametrize("site", SITES)
def test_an_identity_edit_reproduces_the_clean_logits_exactly(model, tokens, site):
    clean = clean_logits(model, tokens)
    edited = run_with_site_edit(model, tokens, HookSpec(layer=1, site=site), lambda x: x)
    torch.testing.assert_close(edited, clean, atol=1e-6, rtol=0)


def test_adding_a_vector_at_resid_post_matches_a_plain_forward_hook_on_the_block(model, tokens):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(1))
    block = model.site(1, "resid_post").block
    expected = plain_logits(model, tokens, [(block, "output", lambda x: x + v)])
    got = run_with_site_edit(model, tokens, HookSpec(layer=1, site="resid_post"), lambda x: x + v)
    assert (got - clean_logits(model, tokens)).abs().max() > 1e-3, "the edit should change the logits"
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_adding_a_vector_at_resid_pre_matches_a_forward_pre_hook_on_the_block(model, tokens):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(2))
    block = model.site(2, "resid_pre").block
    expected = plain_logits(model, tokens, [(block, "input", lambda x: x + v)])
    got = run_with_site_edit(model, tokens, HookSpec(layer=2, site="resid_pre"), lambda x: x + v)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # resid_pre of block 2 is resid_post of block 1: the same edit there gives the same logits
    after_1 = run_with_site_edit(model, tokens, HookSpec(layer=1, site="resid_post"), lambda x: x + v)
    torch.testing.assert_close(got, after_1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("site", ["attn_out", "mlp_out"])
def test_scaling_a_sublayer_output_matches_a_forward_hook_on_that_module(model, tokens, site):
    where = model.site(0, site)
    expected = plain_logits(model, tokens, [(where.module, "output", lambda x: 3.0 * x)])
    got = run_with_site_edit(model, tokens, HookSpec(layer=0, site=site), lambda x: 3.0 * x)
    assert (got - clean_logits(model, tokens)).abs().max() > 1e-4
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_edits_given_out_of_forward_order_are_applied_in_forward_order(model, tokens):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    late, early = model.site(2, "resid_post"), model.site(0, "mlp_out")
    expected = plain_logits(model, tokens, [(early.module, "output", lambda x: -x), (late.block, "output", lambda x: x + v)])
    got = run_with_edits(model, tokens, [(HookSpec(layer=2, site="resid_post"), lambda x: x + v),
                                         (HookSpec(layer=0, site="mlp_out"), lambda x: -x)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_two_edits_of_one_site_are_applied_in_the_order_given(model, tokens):
    v = torch.ones(model.d_model)
    hook = HookSpec(layer=1, site="resid_post")
    got = run_with_edits(model, tokens, [(hook, lambda x: x + v), (hook, lambda x: 2 * x)])
    expected = run_with_site_edit(model, tokens, hook, lambda x: 2 * (x + v))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_an_edit_sees_the_activations_the_stream_reads(model, tokens):
    hook = HookSpec(layer=1, site="resid_post")
    seen = {}

    def spy(x):
        seen["x"] = x.clone()
        return x

    run_with_site_edit(model, tokens, hook, spy)
    streamed = hook_activations(model, tokens, hook)
    torch.testing.assert_close(seen["x"], streamed, atol=0, rtol=0)
    acts, logits = clean_logits_and_site(model, tokens, hook)
    torch.testing.assert_close(acts, streamed, atol=0, rtol=0)
    torch.testing.assert_close(logits, clean_logits(model, tokens), atol=0, rtol=0)


def test_an_edit_that_changes_the_shape_is_refused(tokens):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="changed the shape"):
        run_with_site_edit(model, tokens, HookSpec(layer=1, site="resid_post"), lambda x: x[:, :2])


def test_an_identity_edit_is_exact_on_a_bfloat16_model(tokens):
    model = tiny_model("llama", dtype="bfloat16")
    hook = HookSpec(layer=1, site="resid_post")
    clean = clean_logits(model, tokens)
    assert clean.dtype == torch.float32
    torch.testing.assert_close(run_with_site_edit(model, tokens, hook, lambda x: x.float()), clean, atol=0, rtol=0)


def test_read_sites_reads_several_sites_after_an_earlier_edit_like_plain_hooks(model, tokens):
    from sources.patching import read_sites

    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    edit_hook, late, early = HookSpec(layer=0, site="resid_post"), HookSpec(layer=2, site="resid_post"), HookSpec(layer=0, site="resid_pre")
    got = read_sites(model, tokens, [late, early], [(edit_hook, lambda x: x + v)])
    captured = {}

    def keep(name):
        def fn(x):
            captured[name] = x.detach().clone()
            return x
        return fn

    block = lambda i: model.site(i, "resid_post").module  # noqa: E731
    want = plain_logits(model, tokens, [(model.site(0, "resid_pre").module, "input", keep("early")),
                                         (block(0), "output", lambda x: x + v), (block(2), "output", keep("late"))])
    torch.testing.assert_close(got.acts[0].float(), captured["late"].float(), atol=1e-5, rtol=0)  # in the order given
    torch.testing.assert_close(got.acts[1].float(), captured["early"].float(), atol=0, rtol=0)
    torch.testing.assert_close(got.logits, want, atol=1e-5, rtol=0)
    stopped = read_sites(model, tokens, [late], [(edit_hook, lambda x: x + v)], logits=False)
    assert stopped.logits is None
    torch.testing.assert_close(stopped.acts[0], got.acts[0], atol=0, rtol=0)
    with pytest.raises(ValueError, match="both edited and read"):
        read_sites(model, tokens, [edit_hook], [(edit_hook, lambda x: x)])
