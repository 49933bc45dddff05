"""Interventions: exactness of the edits, batched arms, end-to-end effects, null calibration, bad input.

Tiny random models (tests/tiny.py) and a tiny TopK SAE module with sae_lens's encode/decode/W_dec API,
so everything runs in seconds on a CPU.
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from interventions import edits as E
from interventions.config import InterventionsConfig
from sources.sae_view import SAEView
from interventions.arms import Arm, GroupEval, GroupSpec, Plan
from interventions.forward import check_read_layer, multi_arm_logits, token_effects
from interventions.pipeline import group_rows, run_interventions, select_groups
from interventions.effects import adjust_run, doc_sums, verdicts_frame
from sources.config import DataSpec, HookSpec, StreamSpec
from sources.errors import ConfigError
from sources.session import Session
from sources.patching import clean_logits, run_with_edits
from tiny import tiny_corpus_file, tiny_model

HOOK = HookSpec(layer=1, site="resid_post")


class TinyTopKSAE(torch.nn.Module):
    """A TopK SAE with sae_lens's inference API (encode, decode, W_dec [d_sae, d_in], b_dec, cfg)."""

    def __init__(self, d_in: int = 32, d_sae: int = 48, k: int = 4, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d_sae, d_in, generator=g)
        W = W / W.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W.clone())
        self.W_enc = torch.nn.Parameter(W.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(0.01 * torch.randn(d_in, generator=g))
        self.k = k
        self.cfg = SimpleNamespace(d_in=d_in, d_sae=d_sae, normalize_activations="none", metadata={})

    def encode(self, x):
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values)

    def decode(self, f):
        return f @ self.W_dec + self.b_dec


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model("llama")


@pytest.fixture(scope="module")
def sae():
    return TinyTopKSAE().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tokens(model):
    g = torch.Generator().manual_seed(1)
    return torch.randint(4, len(model.tokenizer), (3, 24), generator=g)


def test_ablating_nothing_and_steering_with_alpha_zero_give_the_clean_logits(model, sae, tokens):
    clean = clean_logits(model, tokens)
    nothing = run_with_edits(model, tokens, [(HOOK, E.sae_latent_edit(sae, [], "zero"))])
    no_position = run_with_edits(model, tokens, [(HOOK, E.sae_latent_edit(
        sae, [0, 1, 2], "mean", mean_K=torch.ones(3), positions=torch.zeros(tokens.shape, dtype=torch.bool)))])
    v = torch.randn(model.d_model)
    steered, _ = multi_arm_logits(model, HOOK, tokens, [E.as_edit_fn(lambda x: E.steer_delta(x, v, 0.0))] * 2)
    for logits in (nothing, no_position, steered[0], steered[1]):
        torch.testing.assert_close(logits, clean, atol=1e-5, rtol=0)


def _next_block_input(model, tokens, run):
    """Residual stream entering block 2 (= resid_post of block 1), captured by a plain PyTorch pre-hook."""
    seen = {}

    def grab(_module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    handle = model.hf.model.layers[2].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return seen["x"]


def test_a_zero_group_ablation_changes_the_residual_by_exactly_minus_the_members_decoder_contributions(model, sae, tokens):
    with torch.no_grad():
        x_clean = _next_block_input(model, tokens, lambda: model.hf(tokens))
        f = sae.encode(x_clean)
        counts = (f > 0).sum((0, 1))
        group = counts.argsort(descending=True)[:3].tolist()  # latents that do fire here
        x_edit = _next_block_input(model, tokens,
                                   lambda: run_with_edits(model, tokens, [(HOOK, E.sae_latent_edit(sae, group, "zero"))]))
        expected = -(f[..., group] @ sae.W_dec[group])
    assert expected.abs().max() > 1e-2  # the edit is not trivially zero
    torch.testing.assert_close(x_edit - x_clean, expected, atol=1e-5, rtol=0)


def test_the_batched_multi_arm_forward_equals_the_arms_run_one_by_one(model, sae, tokens):
    W = SAEView(sae).decoder_FD()
    basis = E.decoder_basis(W, [3, 5, 7])
    mu = torch.randn(model.d_model)
    v = torch.randn(model.d_model)
    edits = [
        E.sae_latent_edit(sae, [3, 5, 7], "zero"),
        E.sae_latent_edit(sae, [5], "clamp", clamp_K=torch.tensor([4.0])),
        E.as_edit_fn(lambda x: E.project_out_delta(x, basis)),
        E.as_edit_fn(lambda x: E.mean_project_delta(x, basis, mu)),
        E.as_edit_fn(lambda x: E.steer_delta(x, v, 3.0)),
    ]
    batched, _ = multi_arm_logits(model, HOOK, tokens, edits)
    for a, edit in enumerate(edits):
        one = run_with_edits(model, tokens, [(HOOK, edit)])
        torch.testing.assert_close(batched[a], one, atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[4])


def test_subspace_edits_do_what_their_names_say():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 16, generator=g)
    B = E.decoder_basis(torch.randn(4, 16, generator=g), [0, 1, 2])
    proj = lambda y: (y @ B) @ B.T  # noqa: E731
    assert proj(x + E.project_out_delta(x, B)).abs().max() < 1e-5
    target = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close((x + E.set_coordinates_delta(x, B, target)) @ B, target.expand(5, 7, 3), atol=1e-5, rtol=0)
    mu = torch.randn(16, generator=g)
    torch.testing.assert_close(proj(x + E.mean_project_delta(x, B, mu)), proj(mu).expand_as(x), atol=1e-5, rtol=0)
    ref = torch.randn(5, 7, 16, generator=g)
    u = E.random_unit_vector(16, np.random.default_rng(0))
    torch.testing.assert_close(E.norm_matched_delta(ref, u).norm(dim=-1), ref.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_per_token_ce_and_kl_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    clean, edited = torch.randn(2, 5, 11, generator=g), torch.randn(2, 5, 11, generator=g)
    toks = torch.randint(0, 11, (2, 5), generator=g)
    dce, kl = token_effects(torch.log_softmax(clean, -1), edited, toks)
    p, q = torch.softmax(clean[1, 2], -1), torch.softmax(edited[1, 2], -1)
    assert abs(kl[1, 2] - (p * (p / q).log()).sum()) < 1e-5
    assert abs(dce[1, 2] - (-q[toks[1, 3]].log() + p[toks[1, 3]].log())) < 1e-5
    assert (dce[:, -1] == 0).all() and (kl[:, -1] == 0).all()


def test_kl_of_near_zero_and_of_large_edits_matches_float64_at_a_real_vocabulary_size():
    # separate sums of p*log p and p*log q cancel in float32 (a ~1e-7 floor); the KL of a tiny edit must not sit on it,
    # and an edit that moves all mass to one token (exp(-d) far beyond float32) must stay finite and right
    g = torch.Generator().manual_seed(1)
    clean = 3 * torch.randn(3, 4, 49152, generator=g)
    edited = clean + torch.tensor([1e-4, 1e-3, 1.0]).view(3, 1, 1) * torch.randn(3, 4, 49152, generator=g)
    edited[2, 1, 7] += 200.0
    toks = torch.randint(0, 49152, (3, 4), generator=g)
    _, kl = token_effects(torch.log_softmax(clean, -1), edited, toks)
    lp, lq = torch.log_softmax(clean.double(), -1), torch.log_softmax(edited.double(), -1)
    ref = (lp.exp() * (lp - lq)).sum(-1)
    assert ref[0, :3].max() < 1e-7 and ref[2, 1] > 100
    torch.testing.assert_close(kl[:, :3].double(), ref[:, :3], rtol=0.01, atol=0)


# ----------------------------------------------------------------------------------- end to end

def _small_cfg(**kw) -> InterventionsConfig:
    base = dict(modes=["zero"], max_members=2, n_controls=2, max_tokens=256, pool_tokens=2000, n_boot=200,
                batch_size=16, min_docs=3, steering={"alphas": [0.0, 2.0], "n_random": 1})
    base.update(kw)
    return InterventionsConfig(**base)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus_file(tmp_path_factory.mktemp("corpus"), n_docs=16)


def _data(corpus):
    return DataSpec(source="jsonl", path=str(corpus), context_len=32, max_tokens=4000), StreamSpec(batch_size=8, progress=False)


def test_effects_match_an_independent_pytorch_computation_and_outputs_are_tidy(model, sae, corpus, tmp_path):
    data, stream = _data(corpus)
    group = GroupSpec("gtest", (0, 1, 2, 3), "clique")
    tok = model.tokenizer
    single = [s for s in (tok.decode([i]) for i in range(4, 60)) if len(tok.encode(s, add_special_tokens=False)) == 1]
    icfg = _small_cfg(logit_diffs={"pair": {"targets": single[:2], "foils": single[2:3]}})
    thr = np.zeros(sae.cfg.d_sae, dtype=np.float32)
    res = run_interventions(Session(model, sae, HOOK, data, stream), [group], icfg, thr, seed=0, progress=False)
    eff = res.effects
    assert list(eff.columns[:12]) == ["group_id", "arm", "comparator", "mode", "alpha", "effect", "scope", "estimate",
                                      "ci_low", "ci_high", "p_value", "p_adj"]
    assert len(res.verdicts) == 1 and res.verdicts["group_id"].iloc[0] == "gtest"
    assert {"group", "best_single", "random_groups", "random_directions", "steer:pc1", "steer:random"} <= set(eff["arm"])
    # steering with alpha = 0 changes nothing
    zero = eff[(eff["arm"] == "steer:pc1") & (eff["alpha"] == 0.0) & (eff["comparator"] == "clean")]
    assert np.allclose(zero.loc[zero["scope"] == "fires", "estimate"], 0.0, atol=1e-6)
    # steering at every position leaves no collateral token: its `other` scope is empty, never reported as a number
    steer_other = eff[eff["arm"].str.startswith("steer") & (eff["scope"] == "other") & (eff["comparator"] == "clean")]
    assert len(steer_other) and steer_other["estimate"].isna().all()

    # independent recomputation of the group's mean KL where it fires: plain transformers forward + torch hook
    ge = res.evals[0]
    row = eff[(eff["arm"] == "group") & (eff["comparator"] == "clean") & (eff["effect"] == "kl") & (eff["scope"] == "fires")]
    est = float(row["estimate"].iloc[0])
    from sources.corpora import iter_contexts

    contexts = [c for c in iter_contexts(data.reading(icfg.evaluate_on), model.tokenizer) if c.index in set(ge.context_ids)]
    assert len(contexts) == ge.n_contexts
    tokens = torch.from_numpy(np.stack([c.tokens_L for c in contexts]))
    length = dict(zip(ge.context_ids, ge.context_lengths))  # the stage cuts each context (tail_tokens, span_tokens)
    cut = torch.arange(tokens.shape[1])[None] < torch.tensor([length[c.index] for c in contexts])[:, None]
    mask = torch.from_numpy(np.stack([c.mask_L for c in contexts])) & cut
    members = list(group.members)
    block = model.hf.model.layers[HOOK.layer]

    def ablate(_m, _inp, out):
        h = out[0] if isinstance(out, tuple) else out
        f = sae.encode(h)
        fires = (f[..., members] > 0).any(-1) & mask
        new = h - (f[..., members] * fires[..., None]) @ sae.W_dec[members]
        return (new, *out[1:]) if isinstance(out, tuple) else new

    with torch.no_grad():
        raw_clean = model.hf(tokens).logits.float()
        lp_clean = torch.log_softmax(raw_clean, -1)
        handle = block.register_forward_hook(ablate)
        try:
            raw_edit = model.hf(tokens).logits.float()
            lp_edit = torch.log_softmax(raw_edit, -1)
        finally:
            handle.remove()
        h = {}
        handle = block.register_forward_hook(lambda m, i, o: h.setdefault("x", o[0] if isinstance(o, tuple) else o))
        model.hf(tokens)
        handle.remove()
        fires = (sae.encode(h["x"])[..., members] > 0).any(-1) & mask
    kl = (lp_clean.exp() * (lp_clean - lp_edit)).sum(-1)
    scored = torch.zeros_like(mask)
    scored[:, :-1] = mask[:, :-1] & mask[:, 1:]
    sel = scored & fires
    assert int(sel.sum()) == int(row["n"].iloc[0])
    assert abs(float(kl[sel].mean()) - est) <= 1e-4 * max(1.0, abs(est))
    # the targeted logit difference (mean target logit - mean foil logit; effect = clean - edited) and the margin
    t_ids = [tok.encode(s, add_special_tokens=False)[0] for s in single[:2]]
    f_ids = [tok.encode(single[2], add_special_tokens=False)[0]]

    def ld(raw):
        return raw[..., t_ids].mean(-1) - raw[..., f_ids].mean(-1)

    top = raw_clean.topk(2, dim=-1).indices
    margin = lambda raw: raw.gather(-1, top)[..., 0] - raw.gather(-1, top)[..., 1]  # noqa: E731
    for name, want in (("logit_diff:pair", (ld(raw_clean) - ld(raw_edit))[sel].mean()),
                       ("margin", (margin(raw_clean) - margin(raw_edit))[sel].mean())):
        got = eff[(eff["arm"] == "group") & (eff["comparator"] == "clean") & (eff["effect"] == name) & (eff["scope"] == "fires")]
        assert abs(float(got["estimate"].iloc[0]) - float(want)) <= 1e-4 * max(1.0, abs(float(want))), name
    assert {"logit_diff_per_norm:pair"} <= set(eff["effect"])
    assert ((eff["mode"] == "steer") & (eff["effect"] == "logit_diff:pair")).any()

    from interventions.markdown import render_report
    from interventions.result import InterventionsResult

    res.save(tmp_path / "interventions")
    back = InterventionsResult.load(tmp_path / "interventions")
    assert len(back.effects) == len(eff) and back.verdicts.shape[0] == 1
    pd.testing.assert_frame_equal(back.arms, res.arms.astype({"latents": str}), check_dtype=False)
    assert back.summary["groups"][0]["group_id"] == "gtest" and back.read_layer == res.read_layer
    text = render_report(InterventionsResult.load(tmp_path / "interventions"))
    assert "gtest" in text and "better units" in text


def test_a_group_whose_decoder_rows_are_zero_never_beats_anything(model, corpus):
    sae = TinyTopKSAE(seed=3).eval().requires_grad_(False)
    group = (0, 1, 2, 3, 4, 5)
    sae.W_dec.data[list(group)] = 0.0
    data, stream = _data(corpus)
    icfg = _small_cfg(modes=["zero", "project_out"], primary_effect="kl")
    res = run_interventions(Session(model, sae, HOOK, data, stream), [GroupSpec("gnull", group)], icfg,
                            np.zeros(sae.cfg.d_sae, dtype=np.float32), progress=False)
    v = res.verdicts.iloc[0]
    assert "beats" not in {v["beats_best_single"], v["beats_random_groups"], v["beats_random_directions"]}
    assert not v["verdict"].startswith("better unit")
    g = res.effects[(res.effects["arm"] == "group") & (res.effects["comparator"] == "clean") & (res.effects["mode"] == "zero")]
    assert np.allclose(g["estimate"].fillna(0.0), 0.0)


# ----------------------------------------------------------------------------------- null calibration

def _synthetic_group(rng, effect_boost: float, n_boot: int, arm_doc_sd: float = 0.0) -> GroupEval:
    """Per-token effects for a group, 3 members and 2 draws of each control (co-firing latents, random spans, random
    directions, random groups) drawn from the same distribution (plus ``effect_boost`` for the group), reduced
    through the same code path as real runs. Tokens share their document's offset in every arm; ``arm_doc_sd`` adds
    each arm's own document offsets, so that the differences between arms are clustered by document too."""
    n_docs = int(rng.integers(6, 25))
    sizes = rng.integers(5, 40, n_docs)
    doc_T = np.repeat(np.arange(n_docs), sizes)
    doc_level = rng.normal(0, 0.3, n_docs)  # documents differ: tokens of a document are correlated

    def arm(boost=0.0):
        n = doc_T.shape[0]
        target = rng.random(n) < 0.4
        own = rng.normal(0, arm_doc_sd, n_docs)[doc_T] if arm_doc_sd else 0.0  # this arm's own document offsets
        kl = np.abs(1.0 + doc_level[doc_T] + own + rng.standard_t(4, n) * 0.5) + boost * target
        ce = rng.normal(0.2, 1.0, n) + doc_level[doc_T] + own + boost * target
        norm = np.abs(rng.normal(2.0, 0.5, n)) * target
        return doc_sums(doc_T, n_docs, target, {"ce": ce, "kl": kl}, norm)

    sums = {("group", "zero", None): arm(effect_boost)}
    members = (11, 12, 13)
    for m in members:
        sums[(f"member:{m}", "zero", None)] = arm()
    for r in range(2):
        for kind in ("random_group", "random_direction", "cofiring", "random_span"):
            sums[(f"{kind}:{r}", "zero", None)] = arm()
    plan = Plan(GroupSpec(f"g{rng.integers(1 << 40):x}", members), [Arm("group", "group", "zero")], members,
                [(1, 2, 3), (4, 5, 6)], {}, 1.0, cofiring_groups=[(7, 8, 9), (14, 15, 16)], n_draws=2)
    return GroupEval(plan, n_docs, [str(d) for d in range(n_docs)], sums, int(sizes.sum()), n_docs)


def _run_of_groups(evals, icfg, rng):
    """Effects (BH over the run, as the stage does) and verdicts of synthetic groups."""
    rows, infos = [], []
    for ge in evals:
        r, info = group_rows(ge, icfg, rng, rng)
        rows += r
        infos.append(info)
    eff = adjust_run(pd.DataFrame(rows).assign(p_adj=np.nan), "zero", icfg.primary_effect)
    return eff, verdicts_frame(eff, infos, "zero", icfg.primary_effect, icfg.alpha, icfg.min_docs)


def test_the_primary_comparisons_are_corrected_apart_from_the_secondary_and_the_vs_clean_rows():
    from stats import bh_adjust

    rng = np.random.default_rng(1)
    icfg = InterventionsConfig(modes=["zero"], n_controls=2, n_boot=200, steering={"enabled": False}, min_docs=5)
    evals = [_synthetic_group(rng, 1.0 if i < 2 else 0.0, icfg.n_boot) for i in range(4)]
    eff, _ = _run_of_groups(evals, icfg, rng)
    prim = eff[eff["family"] == "primary"]
    assert len(prim) == 4 * 4  # per group: vs best single, co-firing latents, random spans, random directions
    assert (prim["arm"] == "group").all() and (prim["effect"] == icfg.primary_effect).all() and (prim["scope"] == "fires").all()
    assert set(eff["family"]) == {"primary", "secondary", "vs_clean"}
    assert (eff.loc[eff["comparator"] == "clean", "family"] == "vs_clean").all()
    for fam, sub in eff.groupby("family"):
        np.testing.assert_allclose(sub["p_adj"].to_numpy(), bh_adjust(sub["p_value"].to_numpy()), equal_nan=True)
    # one family over everything (the old rule) would give the primary rows larger corrected p-values
    pooled = bh_adjust(eff.loc[eff["comparator"] != "clean", "p_value"].to_numpy())
    pooled_prim = pooled[(eff.loc[eff["comparator"] != "clean", "family"] == "primary").to_numpy()]
    assert (prim["p_adj"].to_numpy() <= pooled_prim + 1e-12).all()


def test_on_null_data_verdicts_show_wins_no_more_often_than_the_nominal_error_rate():
    rng = np.random.default_rng(0)
    icfg = InterventionsConfig(modes=["zero"], n_controls=2, n_boot=200, steering={"enabled": False}, min_docs=5)
    comps = ("beats_best_single", "beats_random_groups", "beats_random_directions")
    false_wins = null_trials = true_wins = true_trials = 0
    raw_p = []
    for _ in range(25):  # runs of 8 groups: 4 with a real effect (so BH has rejections to make), 4 null
        evals = [_synthetic_group(rng, 1.0 if i < 4 else 0.0, icfg.n_boot) for i in range(8)]
        eff, v = _run_of_groups(evals, icfg, rng)
        null = v["group_id"].isin([e.plan.group.group_id for e in evals[4:]])
        for comp in comps:
            false_wins += int((v.loc[null, comp] == "beats").sum())
            null_trials += int(null.sum())
            true_wins += int((v.loc[~null, comp] == "beats").sum())
            true_trials += int((~null).sum())
        null_cmp = eff["group_id"].isin(v.loc[null, "group_id"]) & (eff["comparator"] != "clean")
        raw_p += eff.loc[null_cmp, "p_value"].dropna().tolist()
    raw_p = np.asarray(raw_p)
    # unadjusted p-values of null comparisons are calibrated (not anti-conservative) ...
    assert (raw_p < icfg.alpha).mean() <= 1.3 * icfg.alpha, f"P(p < alpha) = {(raw_p < icfg.alpha).mean():.3f} under the null"
    # ... null groups win no more often than the nominal rate, while real differences are found
    assert false_wins / null_trials <= icfg.alpha, f"false win rate {false_wins / null_trials:.3f} over {null_trials}"
    assert true_wins / true_trials >= 0.8


# ----------------------------------------------------------------------------------- bad input

def _groups(tmp_path):
    from cooc.result import CoocResult

    df = pd.DataFrame({"latent": [1, 2, 3, 7, 8], "group_id": ["ga", "ga", "ga", "gb", "gb"],
                       "group_size": [3, 3, 3, 2, 2], "structure": ["clique"] * 3 + ["chain"] * 2})
    CoocResult(np.ones(16, dtype=np.int64), df, {"n_tokens": 10}).save(tmp_path)
    return CoocResult.load(tmp_path)


def test_a_group_id_that_does_not_exist_is_a_clear_error(tmp_path):
    df = _groups(tmp_path)
    assert [g.group_id for g in select_groups(df, InterventionsConfig(top_n=1))] == ["ga"]
    with pytest.raises(ConfigError) as exc:
        select_groups(df, InterventionsConfig(groups=["ga", "gzz"]))
    assert exc.value.field == "interventions.groups" and "'gzz' does not exist" in exc.value.message
    with pytest.raises(ConfigError, match="not a numeric column"):
        select_groups(df, InterventionsConfig(rank_by="structure"))


@pytest.mark.parametrize("override, field, fragment", [
    ("interventions.steering.alphas=[]", "interventions.steering.alphas", "alpha grid is empty"),
    ("interventions.modes=[zero, shuffle]", "interventions.modes.1", "'zero', 'mean', 'clamp', 'resample', 'project_out' or 'mean_project'"),
    ("interventions.modes=[]", "interventions.modes", "at least one mode"),
    ("interventions.groups=[]", "interventions.groups", "list of group ids is empty"),
    ("interventions.nboot=5", "interventions.nboot", "unknown key"),
])
def test_bad_interventions_config_names_the_field(override, field, fragment):
    from experiments.cli import build_config
    from experiments.config import ExperimentConfig

    with pytest.raises(ConfigError) as exc:
        build_config(ExperimentConfig, None, [override])
    assert exc.value.field == field
    assert fragment in exc.value.message


def test_read_layers_outside_the_model_or_before_the_hook_are_clear_errors(model, tokens):
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        check_read_layer(model, HOOK, 7)
    with pytest.raises(ConfigError, match="is not after the hook"):
        check_read_layer(model, HOOK, 1)
    check_read_layer(model, HOOK, 2)
    with pytest.raises(ConfigError) as exc:
        multi_arm_logits(model, HookSpec(layer=5), tokens, [lambda x: x])
    assert exc.value.field == "hook.layer"


@pytest.mark.parametrize("args, start", [
    (["--set", "interventions.modes=[zero, bogus]"], "error: interventions.modes.1:"),
    ([], "error: out: "),  # a folder without a finished cooc stage
])
def test_the_cli_exits_2_with_one_line(tmp_path, args, start):
    res = subprocess.run([sys.executable, "-m", "experiments.interventions", *args, "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(start) and "Traceback" not in res.stderr


def test_the_vectorised_p_values_are_the_two_sided_version_of_the_shared_paired_t_test():
    from stats import paired_test

    from interventions.effects import summarize_many

    rng = np.random.default_rng(3)
    n_docs = np.array([6, 12, 40])
    est_a, est_b = np.array([0.3, -0.1, 0.02]), np.array([0.1, 0.0, 0.0])
    boot_a = est_a[:, None] + rng.normal(0, 0.1, (3, 500))
    boot_b = est_b[:, None] + rng.normal(0, 0.05, (3, 500))
    res = summarize_many(est_a - est_b, boot_a - boot_b, n_docs, alpha=0.05)
    for i in range(3):
        one = paired_test(est_a[i], boot_a[i], est_b[i], boot_b[i], n_clusters=int(n_docs[i]), method="t").p_value
        assert res["p_value"][i] == pytest.approx(2 * min(one, 1 - one), rel=1e-9)


def test_latent_edits_equal_decode_differences_for_a_sae_lens_topk_sae_with_decoder_norm_rescaling():
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5, rescale_acts_by_decoder_norm=True)).eval()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(40, 1) * 3 + 0.2)  # decoder rows of unequal norm
        x = torch.randn(2, 6, 16)
        f = sae.encode(x)
        group = f.flatten(0, 1).gt(0).sum(0).argsort(descending=True)[:4].tolist()
        f_new = f.clone()
        f_new[..., group] = 0.0
        expected = sae.decode(f_new) - sae.decode(f)
        got = E.latent_delta(sae, x, group, "zero")
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_the_pool_of_contexts_does_not_depend_on_the_stream_batch_size(model, sae, corpus):
    from interventions.arms import scan_pool

    data, _ = _data(corpus)
    groups = [GroupSpec("ga", (0, 1, 2)), GroupSpec("gb", (5, 6))]
    thr = np.zeros(sae.cfg.d_sae, dtype=np.float32)
    pools = [scan_pool(model, sae, data, HOOK, StreamSpec(batch_size=b, progress=False), groups, thr, 300, progress=False)
             for b in (3, 8)]
    assert pools[0].n_tokens == pools[1].n_tokens
    assert pools[0].group_contexts == pools[1].group_contexts
    np.testing.assert_array_equal(pools[0].count_F, pools[1].count_F)


def test_sqrt_kl_per_norm_does_not_favour_larger_edits_where_kl_per_norm_would(model, tokens):
    from interventions.effects import statistic

    with torch.no_grad():
        lp = torch.log_softmax(clean_logits(model, tokens), -1)
        x = _next_block_input(model, tokens, lambda: model.hf(tokens))
    v = E.random_unit_vector(model.d_model, np.random.default_rng(0))
    small = 0.05 * float(x.norm(dim=-1).mean())
    logits, _ = multi_arm_logits(model, HOOK, tokens, [E.as_edit_fn(lambda x, a=a: E.steer_delta(x, v, a))
                                                       for a in (small, 2 * small)])
    _, kl = token_effects(lp, logits, tokens)
    doc_T = np.repeat(np.arange(tokens.shape[0]), tokens.shape[1])
    stats = []
    for i, a in enumerate((small, 2 * small)):
        s = doc_sums(doc_T, tokens.shape[0], np.ones(doc_T.shape, bool), {"kl": kl[i].flatten().numpy()},
                     np.full(doc_T.shape, a))
        one = np.ones((1, tokens.shape[0]))
        stats.append((statistic(s, "sqrt_kl_per_norm", "fires", one)[0], statistic(s, "kl", "fires", one)[0] / a))
    assert stats[1][0] == pytest.approx(stats[0][0], rel=0.05)  # scale-free
    assert stats[1][1] == pytest.approx(2 * stats[0][1], rel=0.1)  # naive KL / norm doubles with the edit


def test_auto_groups_add_the_probe_stages_most_enriched_group_per_task():
    from cooc.result import CoocResult

    groups = CoocResult(np.ones(12, dtype=np.int64), pd.DataFrame({
        "latent": range(12), "group_id": ["ga"] * 5 + ["gb"] * 4 + ["gc"] * 2 + ["gd"],
        "group_size": [5] * 5 + [4] * 4 + [2] * 2 + [1], "structure": ["clique"] * 12}))
    probes = pd.DataFrame({"task": ["url_position", "url_position", "word_sense", "word_sense", "url_position"],
                           "group_id": ["gc", "gb", "gc", "ga", "gd"], "enrichment": [9.0, 3.0, 5.0, 8.0, 99.0],
                           "selected": [True, True, True, False, True]})
    ids = lambda **kw: [g.group_id for g in select_groups(groups, InterventionsConfig(**kw), probe_groups=probes)]
    # top 1 by size (ga), then url_position's most enriched selected group (gc; gd is below min_size),
    # then word_sense's (gc again: not repeated; ga is not selected)
    assert ids(top_n=1) == ["ga", "gc"]
    assert ids(top_n=1, probe_groups=2) == ["ga", "gc", "gb"]
    assert ids(top_n=1, probe_groups=0) == ["ga"]
    assert [g.group_id for g in select_groups(groups, InterventionsConfig(top_n=1))] == ["ga"]  # no probes stage
    tasks = {g.group_id: g.probe_tasks for g in select_groups(groups, InterventionsConfig(top_n=1), probe_groups=probes)}
    assert tasks == {"ga": (), "gc": ("url_position", "word_sense")}
    # a sample is followed by the probe groups it did not draw; a drawn probe group is not repeated
    sample = InterventionsConfig(groups="sample", population={"n_groups": 1})
    drawn = [g.group_id for g in select_groups(groups, sample, seed=0)]
    both = select_groups(groups, sample, probe_groups=probes, seed=0)
    assert [g.group_id for g in both] == drawn + [g for g in ["gc"] if g not in drawn]
    assert {g.group_id: g.probe_tasks for g in both}["gc"] == ("url_position", "word_sense")
    assert [g.group_id for g in select_groups(groups, sample.model_copy(update={"probe_groups": 0}), probe_groups=probes,
                                              seed=0)] == drawn
    census = select_groups(groups, InterventionsConfig(groups="sample", population={"n_groups": None}), probe_groups=probes,
                           seed=0)  # every group of >= 2 members is drawn, gc among them: it is not added again
    assert sorted(g.group_id for g in census) == ["ga", "gb", "gc"]
    assert {g.group_id: g.probe_tasks for g in census} == {"ga": (), "gb": (), "gc": ("url_position", "word_sense")}


def test_documents_first_orders_one_item_per_document_before_any_second():
    from interventions.arms import documents_first

    ids = np.arange(10)
    doc = {i: i // 3 for i in ids}  # documents 0..3 with 3, 3, 3, 1 items
    order = documents_first(ids, doc.get, np.random.default_rng(0))
    assert sorted(order.tolist()) == ids.tolist()
    assert len({doc[i] for i in order[:4]}) == 4  # the first round covers every document
    assert len({doc[i] for i in order[4:7]}) == 3  # the second round: the documents with a second item
    np.testing.assert_array_equal(order, documents_first(ids, doc.get, np.random.default_rng(0)))


# ----------------------------------------------------------------------------------- the modes table, resample

def test_every_configurable_mode_has_one_table_entry_with_an_edit_function():
    import typing

    from interventions.config import Mode
    from interventions.modes import MODES

    assert set(typing.get_args(Mode)) == set(MODES)
    assert all(m.edits in ("latents", "subspace") and callable(m.delta) and m.doc for m in MODES.values())
    assert MODES["resample"].needs == {"pool_latents"} and not MODES["zero"].needs


def test_a_resample_edit_equals_the_decode_difference_with_the_latents_of_another_input():
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5, rescale_acts_by_decoder_norm=True)).eval()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(40, 1) * 3 + 0.2)
        x, other = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
        f, f_other = sae.encode(x), sae.encode(other)
        group = (f.flatten(0, 1).gt(0).sum(0) + f_other.flatten(0, 1).gt(0).sum(0)).argsort(descending=True)[:4].tolist()
        where = torch.rand(2, 6) > 0.3
        f_new = f.clone()
        f_new[..., group] = torch.where(where[..., None], f_other[..., group], f[..., group])
        expected = sae.decode(f_new) - sae.decode(f)  # sae_lens's own decode, not the framework's decoder rows
        got = E.latent_delta(sae, x, group, "resample", values_K=f_other[..., group], positions=where)
    assert expected.abs().max() > 1e-2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="values_K"):
        E.latent_delta(sae, x, group, "resample")


def test_resample_sources_come_from_other_documents_and_are_seeded():
    from interventions.modes import resample_rows

    docs_S = np.array([7] * 50 + [8] * 3 + [9] * 2)
    for own in (7, 8, 9):
        rows = resample_rows(docs_S, own, 40, np.random.default_rng(0))
        assert (docs_S[rows] != own).all()
    rows = resample_rows(docs_S, 7, 40, np.random.default_rng(0))
    assert (rows == resample_rows(docs_S, 7, 40, np.random.default_rng(0))).all()
    assert not (rows == resample_rows(docs_S, 7, 40, np.random.default_rng(1))).all()
    assert (resample_rows(docs_S, 7, 25, np.random.default_rng(0)) == rows[:25]).all()  # padding does not move draws
    alone = resample_rows(np.array([7] * 5), 7, 4, np.random.default_rng(0))
    assert ((alone >= 0) & (alone < 5)).all()  # one document only: its own tokens are all there is


def test_the_resample_mode_runs_end_to_end_reproducibly_and_depends_on_the_seed(model, sae, corpus):
    data, stream = _data(corpus)
    group = GroupSpec("gres", (0, 1, 2, 3), "clique")
    thr = np.zeros(sae.cfg.d_sae, dtype=np.float32)
    icfg = _small_cfg(modes=["resample", "zero"], steering={"enabled": False})
    runs = [run_interventions(Session(model, sae, HOOK, data, stream), [group], icfg, thr, seed=s, progress=False) for s in (0, 0, 5)]
    eff = runs[0].effects
    res = eff[(eff["mode"] == "resample") & (eff["arm"] == "group") & (eff["comparator"] == "clean")
              & (eff["effect"] == "kl") & (eff["scope"] == "fires")]
    assert len(res) == 1 and float(res["estimate"].iloc[0]) > 0  # the edit changes the model where the group fires
    assert {"best_single", "random_groups", "random_directions"} <= set(eff.loc[eff["mode"] == "resample", "arm"])
    assert runs[0].verdicts["mode"].iloc[0] == "resample"
    pd.testing.assert_frame_equal(runs[0].effects, runs[1].effects)
    other_seed = runs[2].effects.set_index(["arm", "comparator", "mode", "effect", "scope"])["estimate"]
    same = eff.set_index(["arm", "comparator", "mode", "effect", "scope"])["estimate"]
    key = ("group", "clean", "resample", "kl", "fires")
    assert other_seed.loc[key] != same.loc[key]


def test_resample_effects_do_not_depend_on_how_contexts_and_arms_are_batched(model, sae, corpus):
    data, stream = _data(corpus)
    group = GroupSpec("gres", (0, 1, 2, 3), "clique")
    thr = np.zeros(sae.cfg.d_sae, dtype=np.float32)
    est = []
    for batch_size in (4, 32):
        icfg = _small_cfg(modes=["resample"], steering={"enabled": False}, batch_size=batch_size)
        eff = run_interventions(Session(model, sae, HOOK, data, stream), [group], icfg, thr, seed=0, progress=False).effects
        sel = (eff["mode"] == "resample") & (eff["comparator"] == "clean") & (eff["scope"] == "fires")
        est.append(eff[sel].set_index(["arm", "effect"])["estimate"].sort_index())
    assert len(est[0]) > 5
    np.testing.assert_allclose(est[0].to_numpy(), est[1].to_numpy(), rtol=1e-4, atol=1e-7)


def test_collateral_is_the_unedited_tokens_from_each_contexts_first_edit_on():
    import torch

    from interventions.arms import collateral_mask
    from interventions.effects import doc_sums

    edited = torch.tensor([[0, 0, 1, 0, 1, 0],   # edits at 2 and 4
                           [0, 0, 0, 0, 0, 0],   # never edited: nothing is collateral
                           [1, 1, 1, 1, 1, 1],   # steered everywhere: nothing is collateral
                           [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    want = [[i > 2 and i != 4 for i in range(6)], [False] * 6, [False] * 6, [i > 0 for i in range(6)]]
    assert collateral_mask(edited).tolist() == want
    doc = np.array([0, 0, 1, 1])
    target = np.array([True, False, False, False])
    s = doc_sums(doc, 2, target, {"kl": np.array([1.0, 2.0, 3.0, 4.0])}, other_T=np.array([True, True, False, True]))
    assert s.get("n", "other").tolist() == [1.0, 1.0] and s.get("kl", "other").tolist() == [2.0, 4.0]  # targets never
    assert s.get("kl", "fires").tolist() == [1.0, 0.0]
