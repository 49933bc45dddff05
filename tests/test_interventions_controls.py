"""Interventions: the controls at the group's tokens (checked against a plain PyTorch hook), the co-firing control's
draws, arms that change nothing, and the non-additivity test (its null with shared tokens and correlated effects, and
a planted departure).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from interventions import edits as E
from interventions.arms import (Arm, Chunk, Evaluator, GroupEval, GroupSpec, Plan, Pool, clean_pass, cofiring_groups,
                                member_halves, run_arms)
from interventions.config import InterventionsConfig
from interventions.effects import additivity_frame, adjust_run, doc_sums, verdicts_frame
from interventions.forward import multi_arm_logits
from interventions.pipeline import group_rows
from sources.config import HookSpec
from test_interventions import model, sae  # noqa: F401  (the tiny llama and TopK SAE fixtures)
from tiny import tiny_model

HOOK = HookSpec(layer=1, site="resid_post")


def _pool(model, sae) -> Pool:
    F = sae.cfg.d_sae
    return Pool(100, np.full(F, 10.0), np.ones(F), torch.zeros(model.d_model), 1.0)


def _chunk(model, sae, tokens, members) -> Chunk:
    x, logits, _, _ = clean_pass(model, HOOK, tokens)
    x = x.float()
    f = sae.encode(x)
    content = torch.ones(tokens.shape, dtype=torch.bool)
    gf = (f[..., list(members)] > 0).any(-1) & content
    return Chunk(tokens, x, f, content, gf, torch.log_softmax(logits, -1), None, np.zeros(tokens.shape[0], dtype=int))


@pytest.mark.parametrize("mode", ["zero", "project_out"])
def test_controls_at_the_groups_tokens_equal_a_plain_pytorch_hook(model, sae, mode):
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(4, len(model.tokenizer), (2, 20), generator=g)
    x0, _, _, _ = clean_pass(model, HOOK, tokens)
    f0 = sae.encode(x0.float())
    counts = (f0 > 0).sum((0, 1))
    order = counts.argsort(descending=True).tolist()
    members, cofire = tuple(order[:3]), tuple(order[3:6])  # latents that fire here, some at other tokens than the group
    icfg = InterventionsConfig(modes=[mode], n_controls=1, steering={"enabled": False})
    ev = Evaluator(model, sae, HOOK, _pool(model, sae), np.zeros(sae.cfg.d_sae, dtype=np.float32), icfg)
    ch = _chunk(model, sae, tokens, members)
    W = sae.W_dec.detach()
    sub = mode == "project_out"
    span = torch.from_numpy(np.linalg.qr(np.random.default_rng(0).normal(size=(model.d_model, 3)))[0]).float()
    arms = [Arm("cofiring:0", "cofiring", mode, cofire, basis=E.decoder_basis(W, cofire) if sub else None),
            Arm("random_span:0", "random_span", mode, members, basis=span)]
    fired_alone = ((f0[..., list(cofire)] > 0).any(-1) & ~ch.group_fires)
    assert fired_alone.any()  # the co-firing latents also fire where the group does not: the test can tell
    logits, _ = multi_arm_logits(model, HOOK, tokens, [E.as_edit_fn(lambda x, a=a: ev.delta(a, ch)) for a in arms])

    block = model.hf.model.layers[HOOK.layer]

    def by_hand(kind):
        def hook(_m, _inp, out):
            h = out[0] if isinstance(out, tuple) else out
            f = sae.encode(h)
            at = (f[..., list(members)] > 0).any(-1, keepdim=True).float()  # the group's tokens
            if sub:
                Bg = torch.linalg.qr(W[list(members)].T)[0]
                ref = -(h @ Bg) @ Bg.T * at
            else:
                ref = -(f[..., list(members)] * at) @ W[list(members)]
            if kind == "cofiring":
                if sub:
                    Bc = torch.linalg.qr(W[list(cofire)].T)[0]
                    d = -(h @ Bc) @ Bc.T * at
                else:
                    d = -(f[..., list(cofire)] * at) @ W[list(cofire)]
            else:
                p = -(h @ span) @ span.T
                d = p / p.norm(dim=-1, keepdim=True) * ref.norm(dim=-1, keepdim=True)
            new = h + d
            return (new, *out[1:]) if isinstance(out, tuple) else new
        return hook

    for i, kind in enumerate(["cofiring", "random_span"]):
        handle = block.register_forward_hook(by_hand(kind))
        try:
            with torch.no_grad():
                want = model.hf(tokens).logits.float()
        finally:
            handle.remove()
        torch.testing.assert_close(logits[i], want, atol=2e-4, rtol=0)
        d = ev.delta(arms[i], ch)
        assert d[~ch.group_fires].abs().max() == 0  # nothing is edited outside the group's tokens
        assert d[ch.group_fires].norm(dim=-1).max() > 1e-3
    # the random span removes exactly the group's norm at every token
    ref = ev.delta(Arm("group", "group", mode, members, basis=E.decoder_basis(ev.W, members) if sub else None), ch)
    torch.testing.assert_close(ev.delta(arms[1], ch).norm(dim=-1), ref.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_an_arm_that_changes_nothing_is_not_run_and_records_exact_zeros(model, sae):
    g = torch.Generator().manual_seed(4)
    tokens = torch.randint(4, len(model.tokenizer), (1, 16), generator=g)
    x0, _, _, _ = clean_pass(model, HOOK, tokens)
    f0 = sae.encode(x0.float())
    never = int(((f0 > 0).sum((0, 1)) == 0).nonzero()[0])
    fired = int((f0 > 0).sum((0, 1)).argmax())
    icfg = InterventionsConfig(modes=["zero"], n_controls=1, steering={"enabled": False})
    ev = Evaluator(model, sae, HOOK, _pool(model, sae), np.zeros(sae.cfg.d_sae, dtype=np.float32), icfg)
    ch = _chunk(model, sae, tokens, (fired, never))
    arms = [Arm(f"member:{never}", "member", "zero", (never,)), Arm(f"member:{fired}", "member", "zero", (fired,))]
    forwarded, recorded = [], {}

    def forward(ch, deltas):
        forwarded.append(len(deltas))
        return {"n": len(deltas)}

    def record(ch, i, arm, d, out):
        recorded[arm.name] = out

    class Bar:
        def update(self, n):
            pass

    run_arms([ch], arms, ev, forward, record, Bar())
    assert forwarded == [1]  # only the live arm ran
    assert recorded[f"member:{never}"] is None and recorded[f"member:{fired}"] is not None


def test_cofiring_draws_fire_at_the_groups_tokens_are_no_members_and_never_linked():
    F = 60
    rng = np.random.default_rng(0)
    count = rng.integers(20, 200, F).astype(float)
    at = np.zeros(F)
    members = (0, 1, 2)
    at[list(members)] = [30, 25, 12]
    at[10:30] = rng.integers(5, 40, 20)  # latents that co-fire with the group
    pool = Pool(1000, count, np.ones(F), torch.zeros(4), 1.0, group_cofire={"g": at})
    linked = {(10, 11), (0, 12)}
    draws = cofiring_groups(GroupSpec("g", members), pool, 30, rng, linked)
    for d in draws:
        assert len(d) == 3 and not set(d) & set(members) and len(set(d)) == 3
        assert all(at[j] > 0 for j in d)  # they fire at the group's tokens
        assert not ({10, 11} <= set(d)) and 12 not in d  # never two linked latents, nor one linked to a member
    halves = member_halves(tuple(range(7)), 3, rng)
    for a, b in halves:
        assert sorted(a + b) == list(range(7)) and len(a) == 3 and len(b) == 4


# ----------------------------------------------------------------------------------- non-additivity

def _additive_group(rng, k: int, interaction: float, n_boot: int) -> GroupEval:
    """A group whose members' effects share tokens and documents and are correlated; the group's per-token effect is
    the sum of its members' plus mean-zero noise (clustered by document) plus ``interaction`` times that sum (an
    interaction of the whole group: each half's effect is the sum of its members' plus noise). Reduced through the
    stage's code path."""
    n_docs = int(rng.integers(8, 30))
    sizes = rng.integers(5, 40, n_docs)
    doc_T = np.repeat(np.arange(n_docs), sizes)
    n = len(doc_T)
    target = rng.random(n) < 0.5
    doc_level = rng.normal(0, 0.5, n_docs)
    shared = rng.normal(0, 1.0, n)  # one factor every member's effect loads on: correlated arms
    member_eff = [np.abs(0.3 + 0.4 * shared + doc_level[doc_T] * 0.3 + rng.normal(0, 0.5, n)) * target for _ in range(k)]
    norm = np.abs(rng.normal(1.0, 0.2, n)) * target

    def sums(eff):
        return doc_sums(doc_T, n_docs, target, {"margin": eff, "ce": eff * 0.5, "kl": np.abs(eff)}, norm)

    def noisy(total, interaction=interaction):
        return total * (1 + interaction) + (rng.normal(0, 0.3, n_docs)[doc_T] + rng.normal(0, 0.5, n)) * target

    members = tuple(range(100, 100 + k))
    s = {(f"member:{m}", "zero", None): sums(e) for m, e in zip(members, member_eff)}
    s[("group", "zero", None)] = sums(noisy(np.sum(member_eff, 0)))
    halves = member_halves(members, 2, rng)
    idx = {m: i for i, m in enumerate(members)}
    for h, (a, b) in enumerate(halves):
        s[(f"half:{h}a", "zero", None)] = sums(noisy(np.sum([member_eff[idx[m]] for m in a], 0), 0.0))
        s[(f"half:{h}b", "zero", None)] = sums(noisy(np.sum([member_eff[idx[m]] for m in b], 0), 0.0))
    for r in range(2):
        for kind in ("random_group", "random_direction", "cofiring", "random_span"):
            s[(f"{kind}:{r}", "zero", None)] = sums(member_eff[0])
    plan = Plan(GroupSpec(f"g{rng.integers(1 << 40):x}", members), [Arm("group", "group", "zero")], members,
                [members, members], {}, 1.0, cofiring_groups=[members, members], halves=halves, n_draws=2)
    return GroupEval(plan, n_docs, [str(d) for d in range(n_docs)], s, int(target.sum()), n_docs)


def _additivity_run(evals, icfg, rng):
    rows, infos = [], []
    for ge in evals:
        r, info = group_rows(ge, icfg, rng, rng)
        rows += r
        infos.append(info)
    eff = adjust_run(pd.DataFrame(rows).assign(p_adj=np.nan), "zero", icfg.primary_effect, icfg.additivity_effect)
    return (eff, verdicts_frame(eff, infos, "zero", icfg.primary_effect, icfg.alpha, icfg.min_docs, icfg.additivity_effect),
            additivity_frame(eff, infos, icfg.alpha, icfg.min_docs))


def test_members_whose_effects_add_are_not_reported_non_additive_beyond_the_nominal_rate():
    from scipy.stats import binom

    rng = np.random.default_rng(0)
    icfg = InterventionsConfig(modes=["zero"], n_controls=2, n_boot=200, steering={"enabled": False}, min_docs=5)
    labels, raw_p = [], []
    for _ in range(10):  # runs of 6 groups whose members' effects add
        evals = [_additive_group(rng, int(rng.integers(2, 7)), 0.0, icfg.n_boot) for _ in range(6)]
        eff, v, add = _additivity_run(evals, icfg, rng)
        labels += v["additivity"].tolist()
        fam = eff[eff["family"] == "additivity"]
        assert len(fam) == 6 and (fam["comparator"] == "sum_of_members").all() and (fam["effect"] == "margin").all()
        raw_p += fam["p_value"].tolist()
        assert set(add["effect"]) == {"margin"} and add["group_id"].nunique() == 6  # CE is not tested: it does not add
    labels = np.array(labels)
    bound = binom.ppf(0.999, len(labels), icfg.alpha)
    assert (labels != "additive").sum() <= bound, pd.Series(labels).value_counts()
    assert (np.array(raw_p) < icfg.alpha).mean() <= 2 * icfg.alpha


def test_a_planted_superadditive_group_is_reported_superadditive_and_the_table_says_by_how_much():
    rng = np.random.default_rng(1)
    icfg = InterventionsConfig(modes=["zero"], n_controls=2, n_boot=200, steering={"enabled": False}, min_docs=5)
    evals = [_additive_group(rng, 4, 1.0, icfg.n_boot) for _ in range(6)]
    _, v, add = _additivity_run(evals, icfg, rng)
    assert (v["additivity"] == "superadditive").mean() >= 0.8
    prim = add[(add["effect"] == "margin") & (add["mode"] == "zero")]
    assert (prim["ratio_vs_sum"].between(1.6, 2.4)).all()  # the group's effect is twice the sum of its members'
    assert (prim["diff_vs_halves"] > 0).all()


# ----------------------------------------------------------------------------------- arms that start at the hook

@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_arms_started_at_the_hook_give_the_full_forwards_logits_and_reads(family, site):
    from interventions.forward import multi_arm_read
    from sources.patching import read_sites

    m = tiny_model(family)
    hook = HookSpec(layer=1, site=site)
    g = torch.Generator().manual_seed(5)
    tokens = torch.randint(4, len(m.tokenizer), (2, 14), generator=g)
    x = read_sites(m, tokens, [hook]).acts[0]
    deltas = [torch.randn(x.shape, generator=g) * s for s in (0.0, 0.5, 2.0)]
    fns = [E.as_edit_fn(lambda v, d=d: d) for d in deltas]
    full, read_full = multi_arm_logits(m, hook, tokens, fns, read_layer=2)
    fast, read_fast = multi_arm_logits(m, hook, tokens, fns, read_layer=2, x_BLD=x)
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(read_fast, read_full, atol=1e-5, rtol=0)
    assert (full[2] - full[0]).abs().max() > 1e-2  # the edits change the logits: the comparison can fail
    torch.testing.assert_close(multi_arm_read(m, hook, tokens, fns, 2, x_BLD=x), read_full, atol=1e-5, rtol=0)
    # a wrong start value is not silently ignored: the blocks before the hook really are skipped
    wrong, _ = multi_arm_logits(m, hook, tokens, fns[:1], read_layer=2, x_BLD=x + torch.randn(x.shape, generator=g))
    assert (wrong[0] - full[0]).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("site", ["resid_post", "resid_pre"])
def test_arms_that_reuse_the_clean_prefix_give_the_full_forwards_logits_and_reads(family, site):
    """Positions before the first edit taken from the clean pass's key-value cache: the logits and reads from there
    on equal the full forward's (gemma3's sliding window, 16, is shorter than the 40-token contexts)."""
    from interventions.arms import clean_pass
    from interventions.forward import clean_hook_and_read, first_edit, multi_arm_read
    from sources.patching import Prefix

    m = tiny_model(family, n_layers=4)  # the read layer (2) is not the last: a pass stopped there lacks layer 3
    hook = HookSpec(layer=1, site=site)
    g = torch.Generator().manual_seed(7)
    B, L = 2, 40
    tokens = torch.randint(4, len(m.tokenizer), (B, L), generator=g)
    x, clean, _, kv = clean_pass(m, hook, tokens, keep_cache=True)
    deltas = []
    for first in (23, 30, 31):
        d = torch.zeros(x.shape)
        d[1, first:] = torch.randn(L - first, x.shape[-1], generator=g)
        d[0, first + 3:] = torch.randn(L - first - 3, x.shape[-1], generator=g)
        deltas.append(d)
    p = first_edit(deltas)
    assert p == 23
    full, read_full = multi_arm_logits(m, hook, tokens, [E.as_edit_fn(lambda v, d=d: d) for d in deltas], read_layer=2)
    for x_start in (None, x):
        fns = [E.as_edit_fn(lambda v, d=d[:, p:]: d) for d in deltas]
        fast, read_fast = multi_arm_logits(m, hook, tokens, fns, read_layer=2, x_BLD=x_start, prefix=Prefix(kv, p))
        assert fast.shape == (3, B, L - p, full.shape[-1])
        torch.testing.assert_close(fast, full[:, :, p:], atol=1e-5, rtol=0)
        torch.testing.assert_close(read_fast, read_full[:, :, p:], atol=1e-5, rtol=0)
    assert (full[0, :, p:] - clean[:, p:]).abs().max() > 1e-2  # the edits change the logits: the comparison can fail
    torch.testing.assert_close(full[:, :, :p], clean[None, :, :p].expand(3, -1, -1, -1), atol=1e-5, rtol=0)
    # the task path's cache (a pass stopped at the read layer) serves passes that stop there too
    _, _, kv_read = clean_hook_and_read(m, hook, tokens, 2, keep_cache=True)
    read_only = multi_arm_read(m, hook, tokens, fns, 2, x_BLD=x, prefix=Prefix(kv_read, p))
    torch.testing.assert_close(read_only, read_full[:, :, p:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="lacks positions"):  # ... but not passes that need later layers
        multi_arm_logits(m, hook, tokens, fns, x_BLD=x, prefix=Prefix(kv_read, p))
    # the cache really is used: the clean cache of other tokens gives other logits
    _, _, _, kv_other = clean_pass(m, hook, torch.randint(4, len(m.tokenizer), (B, L), generator=g), keep_cache=True)
    wrong, _ = multi_arm_logits(m, hook, tokens, fns, x_BLD=x, prefix=Prefix(kv_other, p))
    assert (wrong - full[:, :, p:]).abs().max() > 1e-2


# ----------------------------------------------------------------------------------- the amnesic readout

def test_the_amnesic_readout_tells_information_removed_from_information_moved():
    from interventions.tasks import TaskTarget, amnesic_effects, fit_readout

    rng = np.random.default_rng(0)
    n, D = 400, 12
    docs = np.repeat(np.arange(40), 10)
    y = rng.normal(size=n)
    X = rng.normal(size=(n, D))
    X[:, 0] = y + 0.1 * rng.normal(size=n)  # the target lives in coordinate 0
    rows = np.arange(n)
    ro = fit_readout(TaskTarget("t", "regression", rows, y), X, docs, 5, [1.0])
    moved = X.copy()
    moved[:, [0, 1]] = X[:, [1, 0]]  # the information is still there, in another coordinate
    removed = X.copy()
    removed[:, 0] = rng.normal(size=n)  # the information is gone
    amn = amnesic_effects(ro, X, rows, docs, {"same": X.copy(), "moved": moved, "removed": removed, "none": None}, 5)
    fixed = {k: ro.loss(v, rows).mean() - ro.loss(X, rows).mean() for k, v in (("moved", moved), ("removed", removed))}
    assert abs(amn["same"].mean()) < 1e-12 and (amn["none"] == 0).all()
    assert fixed["moved"] > 0.5 and fixed["removed"] > 0.5  # the fixed readout fails in both cases
    assert abs(amn["moved"].mean()) < 0.05  # the refitted one only when the information is gone
    assert amn["removed"].mean() > 0.5
    one_doc = amnesic_effects(ro, X[:10], rows[:10], docs[:10], {"x": removed[:10]}, 5)  # nothing to cross-fit
    assert np.isnan(one_doc["x"]).all() and "__clean_refit__" in one_doc


def test_the_amnesic_readout_of_a_class_seen_on_fewer_tokens_than_folds_uses_fewer_folds_or_none():
    """Fifty documents of a word-sense-like target whose minority class is on 3 (then 1) tokens: 5 stratified folds
    cannot each hold one of them, so the refit uses 3 folds (then none: NaN effects). And the case sklearn refuses
    outright (every class on fewer tokens than folds), which the default's 50-document task windows hit."""
    from interventions.tasks import TaskTarget, amnesic_effects, fit_readout

    rng = np.random.default_rng(0)
    n, D = 200, 6
    docs = np.repeat(np.arange(50), 4)
    X = rng.normal(size=(n, D))
    y = (X[:, 0] > 0).astype(float)
    rows = np.arange(n)
    ro = fit_readout(TaskTarget("t", "classification", rows, y), X, docs, 5, [1.0])
    for minority, finite in ((3, True), (1, False)):
        keep = np.r_[np.flatnonzero(y == 1)[:minority], np.flatnonzero(y == 0)]
        amn = amnesic_effects(ro, X[keep], rows[keep], docs[keep], {"x": X[keep] + 0.5}, 5)
        assert np.isfinite(amn["x"]).all() == finite and len(amn["x"]) == len(keep)
    # what the default hit: 4 documents, 2 tokens of each class, so every class has fewer tokens than the 4 folds the
    # documents allow, which sklearn refuses; the refit uses 2 folds
    keep = np.r_[np.flatnonzero(y == 1)[:2], np.flatnonzero(y == 0)[:2]]
    d4 = np.arange(4)
    amn = amnesic_effects(ro, X[keep], rows[keep], d4, {"x": X[keep] + 0.5}, 5)
    assert np.isfinite(amn["x"]).all()


def test_no_document_contributes_more_than_max_doc_tokens_and_documents_come_first():
    from interventions.arms import choose_contexts
    from sources.corpora import Context

    L = 40
    ctxs = {}
    for i in range(30):  # document 0 has 20 contexts, documents 1..10 one each
        doc = 0 if i < 20 else i - 19
        ctxs[i] = Context(index=i, doc_index=doc, doc_id=f"d{doc}", tokens_L=np.arange(L), mask_L=np.ones(L, dtype=bool),
                          spans_L2=np.zeros((L, 2), dtype=np.int64))
    pool = Pool(1000, np.ones(4), np.ones(4), torch.zeros(4), 1.0, contexts=ctxs,
                group_contexts={"g": {i: L - 1 for i in ctxs}})
    got = choose_contexts(pool, GroupSpec("g", (0, 1)), 10_000, None, np.random.default_rng(0), max_doc_tokens=100)
    per_doc = {}
    for c, n in got:
        per_doc[c.doc_index] = per_doc.get(c.doc_index, 0) + n
    assert set(per_doc) == set(range(11)) and max(per_doc.values()) <= 100 and per_doc[0] == 80
    uncapped = choose_contexts(pool, GroupSpec("g", (0, 1)), 10_000, None, np.random.default_rng(0))
    assert sum(n for c, n in uncapped if c.doc_index == 0) == 20 * L  # without the cap document 0 dominates


def test_contexts_are_cut_span_tokens_after_the_first_firing_token_and_the_budget_counts_evaluated_positions():
    """A context costs its positions from the group's first firing token to the cut (the earlier ones are the clean
    pass's in every arm at the group's tokens), so one budget reaches more documents; each context is cut at
    min(last + 1 + tail, first + span)."""
    from interventions.arms import choose_contexts
    from sources.corpora import Context

    L = 64
    ctxs = {i: Context(index=i, doc_index=i, doc_id=f"d{i}", tokens_L=np.arange(L), mask_L=np.ones(L, dtype=bool),
                       spans_L2=np.zeros((L, 2), dtype=np.int64)) for i in range(40)}
    first = {i: 30 + (i % 5) for i in ctxs}
    last = {i: (first[i] if i % 2 else 60) for i in ctxs}  # odd: fires once; even: again near the end
    pool = Pool(1000, np.ones(4), np.ones(4), torch.zeros(4), 1.0, contexts=ctxs, group_contexts={"g": last},
                group_first={"g": first})
    got = choose_contexts(pool, GroupSpec("g", (0, 1)), 200, 4, np.random.default_rng(0), span_tokens=10)
    for c, n in got:
        assert n == min(last[c.index] + 1 + 4, first[c.index] + 10)
    cost = [n - first[c.index] for c, n in got]
    assert sum(cost[:-1]) < 200 <= sum(cost) and len(got) >= 20  # 5 or 10 positions each, not 35-64 tokens
    assert [first[c.index] for c, _ in got] == sorted(first[c.index] for c, _ in got)  # chunks share their prefix
    whole = choose_contexts(pool, GroupSpec("g", (0, 1)), 200, 4, np.random.default_rng(0))  # no span cut
    assert len(whole) < len(got)
    assert all(n == min(L, last[c.index] + 5) for c, n in whole)


def test_a_control_whose_draws_differ_is_a_distribution_and_the_test_keeps_its_level():
    """Null: the group's expected effect is the mean of the control's distribution; the draws share the documents'
    effects with the group (so those cancel in the paired difference) and each draw has its own offset. Treating the
    4 drawn controls as fixed, or resampling them inside the bootstrap, is anti-conservative here (measured: 12-20 %
    at 5 %): the draw-to-draw spread dominates and has 3 degrees of freedom, not n_docs - 1."""
    from interventions.effects import bootstrap_weights, effect_row, finish_rows

    rng = np.random.default_rng(7)
    p_null, p_planted = [], []
    for trial in range(400):
        n_docs = 10
        sizes = rng.integers(5, 30, n_docs)
        doc_T = np.repeat(np.arange(n_docs), sizes)
        n = len(doc_T)
        target = np.ones(n, dtype=bool)
        doc_level = rng.normal(0, 1.0, n_docs)[doc_T]  # shared by every arm: cancels when paired

        def arm(offset):
            return doc_sums(doc_T, n_docs, target, {"ce": doc_level + offset + rng.normal(0, 0.3, n)}, np.ones(n))

        group = arm(0.6 if trial % 2 else 0.0)
        draws = [arm(rng.normal(0, 0.2)) for _ in range(4)]
        W = bootstrap_weights(n_docs, 300, rng)
        row = finish_rows([effect_row("g", "group", "cofiring_latents", "zero", None, "ce", "fires", group, draws, W)],
                          0.05)[0]
        (p_planted if trial % 2 else p_null).append(row["p_value"])
        assert (row["ci_low"] > 0 or row["ci_high"] < 0) == (row["p_value"] < 0.05)  # the interval matches the test
    p_null = np.array(p_null)
    assert (p_null < 0.05).mean() <= 0.08, (p_null < 0.05).mean()
    assert (np.array(p_planted) < 0.05).mean() >= 0.5  # an offset of 3 draw SDs is found


def test_the_stage_gives_the_same_effects_with_arms_started_at_the_hook_from_the_clean_prefix_and_with_full_forwards(model, sae, tmp_path, monkeypatch):
    from interventions.pipeline import run_interventions
    from sources.config import DataSpec, StreamSpec
    from sources.session import Session
    from tiny import tiny_corpus_file

    corpus = tiny_corpus_file(tmp_path, n_docs=10)
    data = DataSpec(source="jsonl", path=str(corpus), context_len=32, max_tokens=3000)
    stream = StreamSpec(batch_size=8, progress=False)
    group = GroupSpec("gtest", (0, 1, 2), "clique")
    thr = np.zeros(sae.cfg.d_sae, dtype=np.float32)
    import sources.patching as patching

    made = []  # the prefix path really runs: every cache it builds is counted
    build = patching._prefix_cache
    monkeypatch.setattr(patching, "_prefix_cache", lambda *a: made.append(a[0].length) or build(*a))
    out = {}
    for start, prefix in ((True, True), (True, False), (False, False)):
        icfg = InterventionsConfig(modes=["zero", "project_out"], n_controls=2, max_tokens=192, pool_tokens=1500, n_boot=100,
                                   min_docs=3, start_at_hook=start, reuse_prefix=prefix, steering={"alphas": [2.0], "n_random": 1})
        res = run_interventions(Session(model, sae, HOOK, data, stream), [group], icfg, thr, seed=0, progress=False)
        out[start, prefix] = res.effects.sort_values(["arm", "comparator", "mode", "alpha", "effect", "scope"]).reset_index(drop=True)
        if (start, prefix) == (True, True):
            assert len(made) > 10 and max(made) > 0, made
            n_made = len(made)
    assert len(made) == n_made  # ... and only when asked for
    b = out[False, False]  # every arm's whole forward: the reference
    # float rounding only: CE changes are differences of two ~log V numbers in float32, so an arm with a small edit
    # carries rounding of about 1e-5 of the largest CE change of its effect; the tolerance scales with that
    scale = b.groupby("effect")["estimate"].transform(lambda x: np.nanmax(np.abs(x)) if x.notna().any() else 0.0).to_numpy()
    for a in (out[True, True], out[True, False]):
        assert len(a) == len(b) > 100
        x, y = a["estimate"].to_numpy(), b["estimate"].to_numpy()
        assert (np.isnan(x) == np.isnan(y)).all()
        ok = np.isnan(y) | (np.abs(x - y) <= 1e-4 * np.abs(y) + 1e-4 * scale + 1e-6)
        assert ok.all(), a[~ok][["arm", "mode", "effect", "scope", "estimate"]].assign(reference=y[~ok]).to_string()
        assert np.isfinite(a["estimate"]).sum() > 100
