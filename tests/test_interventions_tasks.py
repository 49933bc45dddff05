"""Task effects of interventions: cross-fitted probe readouts at a later layer, targeted logit margins, bad input.

Tiny random models (tests/tiny.py) and the tiny TopK SAE of tests/test_interventions.py; seconds on a CPU.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from interventions.config import InterventionsConfig
from interventions.arms import GroupSpec
from interventions.forward import clean_hook_and_read, margin_effect, resolve_read_layer
from interventions.pipeline import run_interventions
from interventions.tasks import (TaskData, TaskTarget, TaskWindow, choose_windows, effect_name, fit_readout,
                                 load_task_data)
from sources.config import DataSpec, HookSpec, StreamSpec
from sources.errors import ConfigError
from sources.session import Session
from test_interventions import TinyTopKSAE
from tiny import tiny_corpus_file, tiny_model

HOOK = HookSpec(layer=1, site="resid_post")
READ = 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model("llama")


@pytest.fixture(scope="module")
def sae():
    return TinyTopKSAE().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return tiny_corpus_file(tmp_path_factory.mktemp("corpus_tasks"), n_docs=16)


def _data(corpus):
    return DataSpec(source="jsonl", path=str(corpus), context_len=32, max_tokens=4000), StreamSpec(batch_size=8, progress=False)


def _group(model, sae, corpus):
    """The 4 latents firing most often on the corpus (so the group fires on many task tokens)."""
    from sources.corpora import iter_contexts

    data, _ = _data(corpus)
    tokens = torch.from_numpy(np.stack([c.tokens_L for c in iter_contexts(data, model.tokenizer)][:8]))
    x, _, _ = clean_hook_and_read(model, HOOK, tokens, READ)
    counts = (sae.encode(x.float()) > 0).sum((0, 1))
    return tuple(sorted(counts.argsort(descending=True)[:4].tolist()))


def _planted_task(model, sae, corpus, members, kind="regression", n_windows=14):
    """Task windows = the first 24 tokens of one context per document; every content token is a task token.
    Regression target: the group's total activation at the token (information the group's ablation removes);
    classification target: whether that activation is above its median."""
    from sources.corpora import iter_contexts

    data, _ = _data(corpus)
    seen, ctxs = set(), []
    for c in iter_contexts(data, model.tokenizer):
        if c.doc_index not in seen:
            seen.add(c.doc_index)
            ctxs.append(c)
    ctxs = ctxs[:n_windows]
    rows, windows, ys = [], [], []
    for c in ctxs:
        toks, mask = c.tokens_L[:24], c.mask_L[:24]
        with torch.no_grad():
            x, _, _ = clean_hook_and_read(model, HOOK, torch.from_numpy(toks)[None], READ)
            a = sae.encode(x.float())[0][:, list(members)].sum(-1).numpy()
        pos = np.flatnonzero(mask)
        start = len(rows)
        for p in pos:
            rows.append({"task": "planted", "doc_index": c.doc_index, "doc_id": c.doc_id, "token_index": int(p)})
            ys.append(float(a[p]))
        windows.append(TaskWindow(c.doc_index, c.doc_id, toks, mask, pos.astype(np.int64), np.arange(start, len(rows))))
    y = np.asarray(ys)
    if kind == "classification":
        y = (y > np.median(y)).astype(np.float64)
    ex = pd.DataFrame(rows)
    return TaskData("planted", ex, windows, [TaskTarget("planted/target", kind, np.arange(len(ex)), y)])


def _cfg(**kw):
    base = dict(modes=["zero"], max_members=2, n_controls=2, max_tokens=128, pool_tokens=2000, n_boot=200, batch_size=16,
                min_docs=3, read_layer=READ, steering={"alphas": [0.0, 2.0], "n_random": 1},
                tasks={"max_docs": 1000, "folds": 3, "l2": [1.0]})
    base.update(kw)
    return InterventionsConfig(**base)


def _run(model, sae, corpus, members, td, **kw):
    data, stream = _data(corpus)
    return run_interventions(Session(model, sae, HOOK, data, stream), [GroupSpec("gtask", members, "clique")], _cfg(**kw),
                             np.zeros(sae.cfg.d_sae, dtype=np.float32), seed=0, progress=False, task_data=[td])


@pytest.fixture(scope="module")
def planted(model, sae, corpus):
    members = _group(model, sae, corpus)
    td = _planted_task(model, sae, corpus, members)
    return members, td, _run(model, sae, corpus, members, td)


# ----------------------------------------------------------------------------------- readout

@pytest.mark.parametrize("kind", ["regression", "classification"])
def test_the_cross_fitted_readout_loss_equals_sklearn_on_the_same_arrays(kind):
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    n, d = 240, 12
    docs = np.repeat(np.arange(12), 20)
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + rng.normal(size=n)
    if kind == "classification":
        y = (y > 0).astype(np.float64)
    ro = fit_readout(TaskTarget("t", kind, np.arange(n), y), X, docs, folds=4, l2=[3.0])
    expected = np.empty(n)
    from stats import grouped_folds  # the probes stage's folds: the readout must use exactly these

    for tr, te in grouped_folds(docs, 4, 0, y if kind == "classification" else None):
        assert not set(docs[tr]) & set(docs[te])  # no evaluation document was used to fit its readout
        if kind == "regression":
            m = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(X[tr], y[tr])
            expected[te] = (m.predict(X[te]) - y[te]) ** 2 / np.var(y)
        else:
            m = make_pipeline(StandardScaler(), LogisticRegression(C=1 / 3.0, max_iter=2000)).fit(X[tr], y[tr])
            p1 = m.predict_proba(X[te])[:, 1]
            expected[te] = -np.log(np.where(y[te] == 1, p1, 1 - p1))
    np.testing.assert_allclose(ro.clean_loss, expected, rtol=1e-6, atol=1e-9)
    # a perturbed residual is read by the same fold models
    X2 = X + 0.3
    np.testing.assert_allclose(ro.loss(X2[::-1], np.arange(n)[::-1]), ro.loss(X2, np.arange(n))[::-1], rtol=1e-12)


def test_a_planted_group_whose_ablation_destroys_the_probed_information_has_a_clearly_positive_task_effect(planted, tmp_path):
    members, td, res = planted
    assert td.quality["planted/target"]["clean_r2"] > 0.5  # the readout works on the clean stream
    eff = res.effects
    name = effect_name("planted/target")
    row = eff[(eff["arm"] == "group") & (eff["comparator"] == "clean") & (eff["effect"] == name) & (eff["scope"] == "fires")]
    assert len(row) == 1
    r = row.iloc[0]
    assert r["estimate"] > 0.2 and r["ci_low"] > 0 and r["p_value"] < 0.01, r.to_dict()
    # per unit of removed norm, and the comparisons, are there too
    assert {effect_name("planted/target", True)} <= set(eff["effect"])
    cmp = eff[(eff["arm"] == "group") & (eff["effect"] == name) & (eff["scope"] == "fires")]
    assert {"clean", "best_single", "cofiring_latents", "random_spans", "random_directions", "random_groups"} <= set(cmp["comparator"])
    # the amnesic readout (refitted after the edit) sits beside the fixed one; the planted group's edit removes the
    # target from the stream, so the refitted readout loses it too
    amn = eff[(eff["arm"] == "group") & (eff["comparator"] == "clean") & (eff["scope"] == "fires")
              & (eff["effect"] == effect_name("planted/target", amnesic=True))]
    assert len(amn) == 1 and amn["estimate"].iloc[0] > 0.1, amn.to_dict("records")
    # steering along the alpha grid reads the task too; alpha = 0 changes nothing
    st = eff[(eff["mode"] == "steer") & (eff["effect"] == name) & (eff["comparator"] == "clean")]
    assert set(st["alpha"]) == {0.0, 2.0}
    assert (st.loc[(st["alpha"] == 0.0) & (st["scope"] == "fires"), "estimate"] == 0.0).all()
    assert st.loc[st["scope"] == "other", "estimate"].isna().all()  # steered at every position: no collateral token
    ev = res.effect_verdicts
    assert ((ev["effect"] == name) & (ev["kind"] == "task")).any()
    assert "task_beats_best_single_on" in res.verdicts.columns

    from interventions.markdown import render_report
    from interventions.result import InterventionsResult

    res.save(tmp_path / "interventions")
    back = pd.read_csv(tmp_path / "interventions" / "effect_verdicts.csv")
    assert set(back["kind"]) == {"model", "task"} and len(back) == len(ev)
    assert (tmp_path / "interventions" / "steering.png").exists()
    text = render_report(InterventionsResult.load(tmp_path / "interventions"))
    assert "Task effects at layer 2" in text and "planted/target" in text and "Decision-margin drop" in text


def test_the_task_effect_equals_an_independent_recomputation_with_a_plain_pytorch_hook(planted, model, sae):
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    members, td, res = planted
    te = res.evals[0].tasks[0]
    y, docs = td.targets[0].y, td.doc_N
    block = model.hf.model.layers[HOOK.layer]
    read_block = model.hf.model.layers[READ]

    def run(tokens, ablate):
        seen = {}

        def edit(_m, _i, out):
            h = out[0] if isinstance(out, tuple) else out
            f = sae.encode(h)
            fires = (f[..., list(members)] > 0).any(-1) & torch.from_numpy(mask)[None]
            new = h - (f[..., list(members)] * fires[..., None]) @ sae.W_dec[list(members)]
            seen["fires"] = fires[0]
            return (new, *out[1:]) if isinstance(out, tuple) else new

        def grab(_m, _i, o):
            seen["r"] = (o[0] if isinstance(o, tuple) else o)[0]

        hs = [read_block.register_forward_hook(grab)]
        if ablate:
            hs.append(block.register_forward_hook(edit))
        try:
            with torch.no_grad():
                model.hf(torch.from_numpy(tokens)[None])
        finally:
            for h in hs:
                h.remove()
        return seen

    n = len(td.examples)
    X_clean, X_edit = np.zeros((n, model.d_model)), np.zeros((n, model.d_model))
    fires = np.zeros(n, dtype=bool)
    used = np.zeros(n, dtype=bool)
    for w_i in te.windows:
        w = td.windows[w_i]
        mask = w.mask_L
        c, e = run(w.tokens_L, False), run(w.tokens_L, True)
        X_clean[w.rows] = c["r"][w.pos].numpy()
        X_edit[w.rows] = e["r"][w.pos].numpy()
        fires[w.rows] = e["fires"][w.pos].numpy()
        used[w.rows] = True
    # the readout is fitted on the clean stream of every window of the task (not only the evaluated ones)
    X_all = np.zeros((n, model.d_model))
    for w in td.windows:
        mask = w.mask_L
        X_all[w.rows] = run(w.tokens_L, False)["r"][w.pos].numpy()
    delta = np.zeros(n)
    from stats import grouped_folds  # the readout's folds (the probes stage's), with the run's seed

    for tr, tst in grouped_folds(docs, 3, 0):
        m = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(X_all[tr], y[tr])
        delta[tst] = ((m.predict(X_edit[tst]) - y[tst]) ** 2 - (m.predict(X_clean[tst]) - y[tst]) ** 2) / np.var(y)
    sel = used & fires
    eff = res.effects
    row = eff[(eff["arm"] == "group") & (eff["comparator"] == "clean") & (eff["effect"] == effect_name("planted/target"))
              & (eff["scope"] == "fires")].iloc[0]
    assert int(row["n"]) == int(sel.sum())
    assert row["estimate"] == pytest.approx(delta[sel].mean(), rel=1e-3, abs=1e-5)


def test_the_logit_level_task_effect_equals_an_independent_recomputation_with_a_plain_pytorch_hook(planted, model, sae):
    """The continuations chosen per fold on the other folds' clean logits (numpy, from plain forward passes), and each
    task token's ``z * (score_clean - score_edit)`` with the group ablated by a plain forward hook."""
    from stats import grouped_folds
    from interventions.tasks import signed_target

    members, td, res = planted
    te = res.evals[0].tasks[0]
    t = td.targets[0]
    block = model.hf.model.layers[HOOK.layer]
    m = _cfg().tasks.logit_tokens

    def logits(tokens, mask, ablate):
        def edit(_m, _i, out):
            h = out[0] if isinstance(out, tuple) else out
            f = sae.encode(h)
            fires = (f[..., list(members)] > 0).any(-1) & torch.from_numpy(mask)[None]
            new = h - (f[..., list(members)] * fires[..., None]) @ sae.W_dec[list(members)]
            return (new, *out[1:]) if isinstance(out, tuple) else new

        hs = [block.register_forward_hook(edit)] if ablate else []
        try:
            with torch.no_grad():
                return model.hf(torch.from_numpy(tokens)[None]).logits[0].double().numpy()
        finally:
            for h in hs:
                h.remove()

    n = len(td.examples)
    L_clean = None
    for w in td.windows:
        lg = logits(w.tokens_L, w.mask_L, False)
        if L_clean is None:
            L_clean = np.zeros((n, lg.shape[1]))
        L_clean[w.rows] = lg[w.pos]
    z = signed_target(t.kind, t.y)
    assert abs(z.mean()) < 1e-9 and abs(z.std() - 1) < 1e-9
    fold = np.empty(n, dtype=np.int64)
    for k, (_, tst) in enumerate(grouped_folds(td.doc_N, 3, 0)):
        fold[tst] = k
    special = {model.tokenizer.bos_token_id, model.tokenizer.eos_token_id, model.tokenizer.pad_token_id} - {None}
    ids = []
    for k in range(3):
        tr = fold != k
        cov = ((z[tr, None] - z[tr].mean()) * (L_clean[tr] - L_clean[tr].mean(0))).mean(0) / L_clean[tr].std(0)
        cov[list(special)] = np.nan  # (a correlation up to sd(z))
        cov[len(model.tokenizer):] = np.nan
        order = [i for i in np.argsort(-cov, kind="stable") if np.isfinite(cov[i])]
        ids.append((order[:m], [i for i in np.argsort(cov, kind="stable") if np.isfinite(cov[i])][:m]))
    c = td.contrasts[t.name]
    for k, (up, down) in enumerate(ids):  # the same continuations (as sets: ties may order them differently)
        assert set(c.ids_K2m[k, :m]) == set(up) and set(c.ids_K2m[k, m:]) == set(down)
    score = lambda L: np.array([L[i, ids[fold[i]][0]].mean() - L[i, ids[fold[i]][1]].mean() for i in range(n)])  # noqa: E731
    s_clean = score(L_clean)
    assert np.corrcoef(s_clean, z)[0, 1] == pytest.approx(td.quality[t.name]["clean_logit_corr"], abs=1e-4)

    L_edit, fires, used = np.zeros_like(L_clean), np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    for w_i in te.windows:
        w = td.windows[w_i]
        L_edit[w.rows] = logits(w.tokens_L, w.mask_L, True)[w.pos]
        with torch.no_grad():
            x, _, _ = clean_hook_and_read(model, HOOK, torch.from_numpy(w.tokens_L)[None], READ)
            f = sae.encode(x.float())[0]
        fires[w.rows] = ((f[:, list(members)] > 0).any(-1).numpy() & w.mask_L)[w.pos]
        used[w.rows] = True
    want = z * (s_clean - score(L_edit))
    sel = used & fires
    eff = res.effects
    row = eff[(eff["arm"] == "group") & (eff["comparator"] == "clean") & (eff["scope"] == "fires")
              & (eff["effect"] == effect_name(t.name, logit=True))].iloc[0]
    assert int(row["n"]) == int(sel.sum()) and sel.sum() > 20
    assert row["estimate"] == pytest.approx(want[sel].mean(), rel=1e-3, abs=1e-5)
    assert row["estimate"] != pytest.approx(0.0, abs=1e-4)  # the edit moves the contrast: the test can fail
    per_norm = eff[(eff["arm"] == "group") & (eff["comparator"] == "best_single")
                   & (eff["effect"] == effect_name(t.name, per_norm=True, logit=True))]
    assert len(per_norm) and per_norm["p_adj"].notna().all()


def test_the_logit_contrast_chooses_each_folds_continuations_on_the_other_folds_only():
    """A token whose logit tracks the target only inside fold 0 is chosen for folds 1 and 2, never for fold 0 (whose
    tokens it would score); special tokens are never chosen; and the score is a plain logit difference."""
    from interventions.tasks import choose_contrast

    rng = np.random.default_rng(0)
    n, V, K = 300, 40, 3
    fold = np.repeat(np.arange(K), n // K)
    z = rng.normal(size=n)
    L = rng.normal(size=(n, V))
    L[:, 5] += 3 * z  # tracks the target everywhere
    L[:, 9] -= 3 * z  # against it everywhere
    L[fold == 0, 17] += 6 * z[fold == 0]  # tracks it in fold 0 only
    L[:, 2] += 9 * z  # a special token
    L[:, 30] = 50 * rng.normal(size=n) + 4 * z  # covaries more than tokens 5 and 17 but correlates far less
    L[:, 39] += 9 * z  # beyond the tokenizer's vocabulary (a padded logit row)

    def sums_of(fold, L=L):
        out = [np.zeros((K, V)) for _ in range(3)] + [np.zeros(K), np.zeros(K)]
        for k in range(K):
            sel = fold == k
            out[0][k], out[1][k], out[2][k] = L[sel].sum(0), (z[sel, None] * L[sel]).sum(0), (L[sel] ** 2).sum(0)
            out[3][k], out[4][k] = sel.sum(), z[sel].sum()
        return out

    c = choose_contrast("t", np.arange(n), z, fold, *sums_of(fold), m=2, exclude={2}, n_vocab=39)
    assert c.ids_K2m.shape == (K, 4) and 2 not in c.ids_K2m and 39 not in c.ids_K2m
    assert 17 not in c.ids_K2m[0, :2] and all(set(c.ids_K2m[k, :2]) == {5, 17} for k in (1, 2))  # not 30
    assert all(5 in c.ids_K2m[k, :2] and 9 in c.ids_K2m[k, 2:] for k in range(K))
    S = c.scores(torch.as_tensor(L)).numpy()
    k0 = c.ids_K2m[0]
    np.testing.assert_allclose(S[:, 0], L[:, k0[:2]].mean(1) - L[:, k0[2:]].mean(1), rtol=1e-5, atol=1e-6)  # float32 scores
    with pytest.raises(ConfigError) as exc:  # more continuations asked for than logits that vary
        flat = L.copy()
        flat[:, 20:30] = 1.5  # ten logits that never vary: 28 of the 38 usable ones are left
        choose_contrast("t", np.arange(n), z, fold, *sums_of(fold, flat), m=15, exclude={2}, n_vocab=39)
    assert exc.value.field == "interventions.tasks.logit_tokens" and "lower logit_tokens" in exc.value.message
    one = np.zeros(n, dtype=np.int64)
    with pytest.raises(ValueError, match="fold 0 holds every task token"):
        choose_contrast("t", np.arange(n), z, one, *[x[:1] for x in sums_of(one)], m=2)


def test_ablating_nothing_gives_task_and_margin_effects_of_exactly_zero(model, corpus):
    sae = TinyTopKSAE(seed=3).eval().requires_grad_(False)
    members = _group(model, sae, corpus)
    sae.W_dec.data[list(members)] = 0.0  # the group's edit is exactly zero
    td = _planted_task(model, sae, corpus, members, kind="classification")
    res = _run(model, sae, corpus, members, td, steering={"enabled": False})
    eff = res.effects
    task = eff[eff["effect"].str.startswith("probe") & (eff["arm"] == "group") & (eff["comparator"] == "clean")]
    assert len(task) and (task["estimate"].fillna(0.0) == 0.0).all()
    assert (task.loc[task["effect"] == effect_name("planted/target"), "p_value"] == 1.0).all()
    margin = eff[(eff["effect"] == "margin") & (eff["arm"] == "group") & (eff["comparator"] == "clean")]
    np.testing.assert_allclose(margin["estimate"], 0.0, atol=1e-5)
    assert res.verdicts["task_beats_best_single_on"].fillna("").eq("").all()


def test_a_group_that_fires_on_no_task_token_has_no_task_rows(model, sae, corpus):
    members = _group(model, sae, corpus)
    td = _planted_task(model, sae, corpus, members)
    td.windows = [TaskWindow(w.doc_index, w.doc_id, w.tokens_L, np.zeros_like(w.mask_L), w.pos[:0], w.rows[:0])
                  for w in td.windows]  # no task token left
    res = _run(model, sae, corpus, members, td, steering={"enabled": False})
    assert not res.effects["effect"].str.startswith("probe").any()
    assert (res.effects["effect"] == "margin").any()


def test_tasks_groups_probe_gives_task_effects_only_to_groups_chosen_for_a_probe_task(model, sae, corpus):
    members = _group(model, sae, corpus)
    td = _planted_task(model, sae, corpus, members)
    data, stream = _data(corpus)
    cfg = _cfg(steering={"enabled": False}, tasks={"max_docs": 1000, "folds": 3, "l2": [1.0], "groups": "probe"})
    specs = [GroupSpec("gsampled", members, "clique"), GroupSpec("gprobe", members, "clique", ("planted",))]
    res = run_interventions(Session(model, sae, HOOK, data, stream), specs, cfg, np.zeros(sae.cfg.d_sae, dtype=np.float32),
                            seed=0, progress=False, task_data=[td])
    task = res.effects[res.effects["effect"].str.startswith("probe")]
    assert set(task["group_id"]) == {"gprobe"}  # the same latents, but only the probe group gets task rows
    assert set(res.effects.loc[res.effects["effect"] == "margin", "group_id"]) == {"gsampled", "gprobe"}
    assert [g["probe_tasks"] for g in res.summary["groups"]] == [[], ["planted"]]
    alone = run_interventions(Session(model, sae, HOOK, data, stream), specs[:1], cfg,
                              np.zeros(sae.cfg.d_sae, dtype=np.float32), seed=0, progress=False, task_data=[td])
    assert not alone.effects["effect"].str.startswith("probe").any() and alone.summary["tasks"] == {}  # none chosen


def test_the_margin_effect_is_the_drop_of_the_clean_top1_minus_top2_logit_difference():
    g = torch.Generator().manual_seed(0)
    clean, edited = torch.randn(2, 5, 11, generator=g), torch.randn(3, 2, 5, 11, generator=g)
    m = margin_effect(torch.log_softmax(clean, -1), edited)
    top = clean[1, 2].topk(2).indices
    want = (clean[1, 2, top[0]] - clean[1, 2, top[1]]) - (edited[2, 1, 2, top[0]] - edited[2, 1, 2, top[1]])
    assert m.shape == (3, 2, 5) and abs(float(m[2, 1, 2] - want)) < 1e-5
    assert float(margin_effect(torch.log_softmax(clean, -1), clean[None]).abs().max()) < 1e-5


# ----------------------------------------------------------------------------------- bad input

def test_read_layer_auto_and_bad_read_layers(model):
    assert resolve_read_layer(model, HOOK, "auto") == 2  # min(hook + 2, last layer)
    assert resolve_read_layer(model, HookSpec(layer=0, site="resid_post"), "auto") == 2
    assert resolve_read_layer(model, HookSpec(layer=2, site="resid_post"), "auto") is None  # nothing after the hook
    assert resolve_read_layer(model, HOOK, None) is None
    with pytest.raises(ConfigError, match="layer 9 does not exist"):
        resolve_read_layer(model, HOOK, 9)
    with pytest.raises(ConfigError, match="is not after the hook"):
        resolve_read_layer(model, HOOK, 0)


def test_a_logit_difference_token_that_is_not_one_token_is_a_clear_error(model, sae, corpus):
    td = _planted_task(model, sae, corpus, (0, 1))
    with pytest.raises(ConfigError) as exc:
        _run(model, sae, corpus, (0, 1), td, logit_diffs={"url": {"targets": ["https://example.com/path"], "foils": ["the"]}})
    assert exc.value.field == "interventions.logit_diffs.url.targets" and "tokens for this tokenizer" in exc.value.message


def test_a_task_the_probes_stage_did_not_build_is_a_clear_error(corpus, model):
    data, _ = _data(corpus)
    ex = pd.DataFrame({"task": ["url_position"], "doc_index": [0], "doc_id": ["doc0"], "window_start": [0],
                       "token_index": [3], "since_start": [1], "since_slash": [1]})
    with pytest.raises(ConfigError) as exc:
        load_task_data(ex, data, model.tokenizer, None, families=["word_sense"])
    assert exc.value.field == "interventions.tasks.tasks" and "has no examples" in exc.value.message
    bad = ex.assign(task="bogus")
    with pytest.raises(ConfigError, match="unknown task 'bogus'"):
        load_task_data(bad, data, model.tokenizer, None)


def test_task_windows_are_one_per_document_where_the_group_fires_up_to_max_docs():
    """Documents, not window tokens, are the budget: each chosen window is from a different document, holds a task
    token where a member fires, and the number of documents is min(max_docs, documents where it fires)."""
    rng = np.random.default_rng(1)
    windows, rows, n = [], [], 0
    for d in range(40):
        for _ in range(3):  # three windows per document, of unequal length
            L = int(rng.integers(4, 60))
            windows.append(TaskWindow(d, f"d{d}", np.zeros(L, np.int64), np.ones(L, bool), np.array([L - 2, L - 1]),
                                      np.array([n, n + 1])))
            rows += [{"doc_index": d}, {"doc_index": d}]
            n += 2
    fires = np.zeros((n, 8), bool)
    fires[rng.random(n) < 0.2, 3] = True
    ro = type("R", (), {"rows": np.arange(n)})()
    td = TaskData("t", pd.DataFrame(rows), windows, [], readouts={"t/x": ro}, fires_NF=fires)
    firing_docs = {w.doc_index for w in windows if fires[w.rows, 3].any()}
    assert 10 < len(firing_docs) < 40
    for max_docs in (5, len(firing_docs), 1000):
        got = choose_windows(td, (3, 5), max_docs, np.random.default_rng(0))
        docs = [windows[i].doc_index for i in got]
        assert len(docs) == len(set(docs)) == min(max_docs, len(firing_docs))
        assert all(fires[windows[i].rows, 3].any() for i in got)
    a = choose_windows(td, (3,), 1000, np.random.default_rng(0))
    b = choose_windows(td, (3,), 1000, np.random.default_rng(7))
    assert a == choose_windows(td, (3,), 1000, np.random.default_rng(0))
    assert a != b  # the window of a document with several is a seeded random one
    assert choose_windows(td, (5,), 1000, np.random.default_rng(0)) == []  # a member that never fires


@pytest.mark.parametrize("override, start", [
    ("interventions.tasks.tasks=[bogus]", "error: interventions.tasks.tasks.0:"),
    ("interventions.read_layer=-3", "error: interventions.read_layer:"),
    ("interventions.tasks.l2=[]", "error: interventions.tasks.l2:"),
    ("interventions.tasks.max_tokens=768", "error: interventions.tasks: max_tokens (window tokens per group) was replaced by max_docs"),
    ("interventions.tasks.max_docs=0", "error: interventions.tasks.max_docs:"),
    ("interventions.population.size_bins=[2,2]", "error: interventions.population.size_bins: give distinct group sizes"),
    ("interventions.dtype=float16", "error: interventions.dtype:"),
    ("interventions.tasks.groups=some", "error: interventions.tasks.groups:"),
])
def test_bad_task_settings_exit_2_with_one_line(tmp_path, override, start):
    res = subprocess.run([sys.executable, "-m", "experiments.interventions", "--set", override, "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(start) and "Traceback" not in res.stderr
