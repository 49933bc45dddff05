"""The population of groups (interventions.population): the stratified sample and the fractions with intervals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from interventions.population import (allocate, group_answers, population_table, sample_groups, size_bin, size_bin_labels,
                                      stratified_fraction)


def _groups(seed=0) -> pd.DataFrame:
    """140 groups like the default's: many pairs, mixed groups of every size, few cliques and chains."""
    rng = np.random.default_rng(seed)
    rows = []
    spec = [("pair", 38, (2, 2)), ("mixed", 68, (4, 64)), ("clique", 22, (3, 40)), ("chain", 11, (3, 5)),
            ("parent_child", 1, (2, 2))]
    for structure, n, (lo, hi) in spec:
        for _ in range(n):
            rows.append({"group_id": f"g{len(rows):03d}", "structure": structure, "group_size": int(rng.integers(lo, hi + 1))})
    return pd.DataFrame(rows)


def test_size_bins_and_their_labels():
    assert size_bin_labels([2, 3, 6, 11, 21]) == ["2", "3-5", "6-10", "11-20", "21+"]
    assert list(size_bin(np.array([2, 3, 5, 6, 20, 21, 64]), [2, 3, 6, 11, 21])) == ["2", "3-5", "3-5", "6-10", "11-20",
                                                                                      "21+", "21+"]


def test_allocation_is_proportional_with_one_per_stratum_and_never_more_than_a_stratum_holds():
    sizes = {"a": 60, "b": 30, "c": 6, "d": 3, "e": 1}
    got = allocate(sizes, 30)
    assert sum(got.values()) == 30 and all(1 <= got[k] <= sizes[k] for k in sizes)
    assert got["a"] > got["b"] > got["c"] >= got["d"] >= got["e"] == 1
    assert abs(got["a"] - 30 * 60 / 100) <= 2  # proportional, up to the forced single draws
    assert allocate(sizes, 100) == sizes and allocate(sizes, 500) == sizes  # a census
    few = allocate(sizes, 3)  # fewer draws than strata: the largest shares
    assert sum(few.values()) == 3 and few["a"] >= 1 and few["e"] == 0


def test_the_sample_is_seeded_stratified_and_a_census_without_n_groups():
    g = _groups()
    a, b, c = sample_groups(g, 30, [2, 3, 6, 11, 21], 0), sample_groups(g, 30, [2, 3, 6, 11, 21], 0), \
        sample_groups(g, 30, [2, 3, 6, 11, 21], 1)
    pd.testing.assert_frame_equal(a, b)
    assert set(a["group_id"]) != set(c["group_id"])
    assert len(a) == 30 and a["group_id"].is_unique and set(a["group_id"]) <= set(g["group_id"])
    strata = (g.assign(s=g["structure"] + "/" + size_bin(g["group_size"].to_numpy(), [2, 3, 6, 11, 21]))
              .groupby("s").size())
    assert set(a["stratum"]) == set(strata.index)  # every stratum drawn from (30 draws, fewer strata)
    per = a.groupby("stratum").agg(n=("group_id", "size"), N=("stratum_groups", "first"), k=("stratum_sampled", "first"))
    assert (per["n"] == per["k"]).all() and (per["N"] == strata.reindex(per.index)).all()
    census = sample_groups(g, None, [2, 3, 6, 11, 21], 0)
    assert set(census["group_id"]) == set(g["group_id"]) and (census["stratum_groups"] == census["stratum_sampled"]).all()


CMP = ("best_single", "cofiring_latents", "random_spans", "random_directions", "sum_of_members")
CONTROLS = ("cofiring_latents", "random_spans", "random_directions")
UNIT = "better unit: beats its best single latent and every control at its tokens"


def _effects(design: pd.DataFrame, yes: dict[str, bool], untested: set[str] = frozenset()) -> pd.DataFrame:
    """effects.csv rows (group vs each comparator at its tokens, zero mode) whose tests say ``yes`` per group: a yes
    group beats every comparator (p 0.001, interval above 0), a no group ties (p 0.4, interval across 0); an untested
    group has 2 documents."""
    rows = []
    for gid in design["group_id"]:
        y = bool(yes[gid])
        for comparator in CMP:
            for effect in ("sqrt_kl_per_norm", "kl", "margin", "probe_logit_per_norm:t"):
                if comparator == "sum_of_members" and effect != "margin":
                    continue
                rows.append({"group_id": gid, "arm": "group", "comparator": comparator, "mode": "zero", "effect": effect,
                             "scope": "fires", "estimate": 0.02 if y else 0.001, "ci_low": 0.01 if y else -0.01,
                             "ci_high": 0.03 if y else 0.012, "p_value": 0.001 if y else 0.4,
                             "n_docs": 2 if gid in untested else 60})
    return pd.DataFrame(rows)


def _table(design, yes, untested=frozenset(), alpha=0.05):
    return population_table(design, _effects(design, yes, untested), "zero", "sqrt_kl_per_norm", "margin", alpha=alpha)


def test_a_group_answers_yes_only_when_its_own_test_finds_the_difference_on_that_side():
    design = sample_groups(_groups(), 30, [2, 3, 6, 11, 21], 0).head(4)
    e = _effects(design, dict.fromkeys(design["group_id"], True))
    g = design["group_id"].tolist()
    sel = (e["comparator"] == "best_single") & (e["effect"] == "sqrt_kl_per_norm")
    e.loc[sel & (e["group_id"] == g[1]), "p_value"] = 0.2  # p above alpha: no
    e.loc[sel & (e["group_id"] == g[2]), "ci_low"] = -0.001  # interval across 0: no
    e.loc[sel & (e["group_id"] == g[3]), ["estimate", "ci_low", "ci_high"]] = [-0.02, -0.03, -0.01]  # the other side
    ans, _ = group_answers(design, e, "zero", "sqrt_kl_per_norm", "margin", 0.05, 5, CONTROLS)
    assert ans["beats its best single latent"].tolist() == [1.0, 0.0, 0.0, 0.0]
    assert ans["loses to its best single latent"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert ans[UNIT].tolist() == [1.0, 0.0, 0.0, 0.0]
    e2 = e[~((e["group_id"] == g[0]) & (e["comparator"] == "random_spans"))]  # a control missing: untested, not no
    ans2, _ = group_answers(design, e2, "zero", "sqrt_kl_per_norm", "margin", 0.05, 5, CONTROLS)
    assert np.isnan(ans2[UNIT].iloc[0]) and ans2["beats its best single latent"].iloc[0] == 1.0


def test_super_and_subadditive_follow_the_verdict_rule_in_the_sums_direction():
    from interventions.effects import additivity_label

    design = sample_groups(_groups(), 30, [2, 3, 6, 11, 21], 0).head(4)
    g = design["group_id"].tolist()
    e = _effects(design, dict.fromkeys(g, True))
    vs_sum = (e["comparator"] == "sum_of_members") & (e["effect"] == "margin")
    # groups 0, 1: group - sum > 0; groups 2, 3: group - sum < 0; the sums of groups 1 and 3 are negative
    e.loc[vs_sum & e["group_id"].isin(g[2:]), ["estimate", "ci_low", "ci_high"]] = [-0.02, -0.03, -0.01]
    sums = pd.DataFrame({"group_id": g, "arm": "sum_of_members", "comparator": "clean", "mode": "zero", "effect": "margin",
                         "scope": "fires", "estimate": [0.05, -0.05, 0.05, -0.05], "ci_low": np.nan, "ci_high": np.nan,
                         "p_value": np.nan, "n_docs": 60})
    e = pd.concat([e, sums], ignore_index=True)
    ans, _ = group_answers(design, e, "zero", "sqrt_kl_per_norm", "margin", 0.05, 5, CONTROLS)
    assert ans["superadditive"].tolist() == [1.0, 0.0, 0.0, 1.0]  # larger in magnitude, in the sum's direction
    assert ans["subadditive"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert ans["non-additive (group vs the sum of its members)"].tolist() == [1.0] * 4
    rows = e[(e["comparator"] == "sum_of_members") & (e["effect"] == "margin")].set_index("group_id")
    labels = [additivity_label({**rows.loc[i].to_dict(), "p_adj": rows.loc[i, "p_value"]}, 0.05, True, s)
              for i, s in zip(g, sums["estimate"])]
    assert labels == ["superadditive", "subadditive", "subadditive", "superadditive"]  # the verdicts' own rule agrees


def test_counts_and_the_weighted_fraction_match_an_independent_computation():
    g = _groups()
    design = sample_groups(g, 30, [2, 3, 6, 11, 21], 3)
    rng = np.random.default_rng(0)
    yes = {gid: bool(rng.random() < 0.4) for gid in design["group_id"]}
    untested = set(design["group_id"].iloc[:2])
    pop = _table(design, yes, untested)
    row = pop[(pop["question"] == "beats its best single latent") & (pop["groups"] == "all")].iloc[0]
    tested = design[~design["group_id"].isin(untested)]
    k = sum(yes[i] for i in tested["group_id"])
    assert (row["n_sampled"], row["n_tested"], row["k"]) == (30, 28, k)
    assert row["sample_fraction"] == pytest.approx(k / 28)
    t = tested.assign(y=[float(yes[i]) for i in tested["group_id"]])
    per = t.groupby("stratum").agg(p=("y", "mean"), N=("stratum_groups", "first"))
    assert row["fraction"] == pytest.approx((per["p"] * per["N"]).sum() / per["N"].sum())
    assert row["ci_low"] <= row["fraction"] <= row["ci_high"] and row["null_rate"] == 0.025
    allN = design.groupby("stratum").agg(N=("stratum_groups", "first"), n=("group_id", "size"))
    u = design[design["group_id"].isin(untested)].groupby("stratum").size().reindex(allN.index, fill_value=0)
    assert row["untested_share"] == pytest.approx(((u / allN["n"]) * allN["N"]).sum() / allN["N"].sum())
    nonadd = pop[pop["question"].str.startswith("non-additive") & (pop["groups"] == "all")].iloc[0]
    assert nonadd["k"] == k and nonadd["null_rate"] == 0.05
    task = pop[(pop["effect"] == "probe_logit_per_norm:t") & (pop["groups"] == "all")].iloc[0]
    assert task["k"] == k
    # with tasks.groups: probe only the groups chosen for a task were read on it: no task question for the sample
    no_tasks = population_table(design, _effects(design, yes, untested), "zero", "sqrt_kl_per_norm", "margin",
                                task_questions=False)
    assert not no_tasks["effect"].str.startswith("probe").any()
    assert no_tasks.drop_duplicates("question")["question"].tolist() == [
        q for q in pop.drop_duplicates("question")["question"] if "probe_logit" not in q]
    by_label = pop[(pop["question"] == "beats its best single latent") & (pop["groups"] == "structure pair")].iloc[0]
    pairs = tested[tested["structure"] == "pair"]["group_id"]
    assert by_label["n_tested"] == len(pairs) and by_label["k"] == sum(yes[i] for i in pairs)


def test_a_census_has_no_sampling_variance_and_no_yes_gives_an_interval_from_zero():
    g = _groups()
    census = sample_groups(g, None, [2, 3, 6, 11, 21], 0)
    rng = np.random.default_rng(1)
    yes = {gid: bool(rng.random() < 0.3) for gid in census["group_id"]}
    row = _table(census, yes).iloc[0]
    assert row["se"] == 0 and row["fraction"] == pytest.approx(np.mean(list(yes.values())))
    design = sample_groups(g, 30, [2, 3, 6, 11, 21], 0)
    none = _table(design, dict.fromkeys(design["group_id"], False)).iloc[0]
    assert none["k"] == 0 and none["ci_low"] == 0 and 0.05 < none["ci_high"] < 0.2


def test_the_weighted_fraction_is_unbiased_and_its_interval_covers_where_the_plain_fraction_is_biased():
    """A population whose small strata answer yes far more often than its large ones: the sample gives each small
    stratum at least one draw, so the plain fraction over-represents them. Over many seeded samples of 30 of 140 groups
    the weighted fraction is centred on the true population fraction, its standard error is not below its spread,
    and its interval covers the truth at the nominal rate or above; the plain fraction is biased. (Equal stratum
    weights make this test fail.)"""
    g = _groups(1)
    bins = [2, 3, 6, 11, 21]
    g["stratum"] = g["structure"] + "/" + size_bin(g["group_size"].to_numpy(), bins)
    N = g.groupby("stratum").size()
    rng = np.random.default_rng(5)
    rate = {h: (0.9 if N[h] <= 6 else 0.2) for h in N.index}
    truth = {gid: bool(rng.random() < rate[h]) for gid, h in zip(g["group_id"], g["stratum"])}
    true_fraction = np.mean(list(truth.values()))
    w, se, plain, cover = [], [], [], []
    for s in range(400):
        design = sample_groups(g, 30, bins, s)
        y = np.array([float(truth[i]) for i in design["group_id"]])
        N_h = design.drop_duplicates("stratum").set_index("stratum")["stratum_groups"].to_dict()
        r = stratified_fraction(y, design["stratum"].to_numpy(), N_h, 0.05)
        w.append(r["fraction"]), se.append(r["se"]), plain.append(y.mean())
        cover.append(r["ci_low"] <= true_fraction <= r["ci_high"])
    assert abs(np.mean(w) - true_fraction) < 0.01, (np.mean(w), true_fraction)
    assert np.mean(plain) - true_fraction > 0.05, (np.mean(plain), true_fraction)
    assert 0.9 < np.mean(se) / np.std(w) < 1.6, (np.mean(se), np.std(w))
    assert np.mean(cover) >= 0.93, np.mean(cover)


def test_a_stage_run_with_groups_sample_writes_the_design_and_the_fractions(tmp_path):
    from experiments.cli import build_config
    from experiments.config import ExperimentConfig
    from interventions.result import InterventionsResult
    from tiny_pipeline import run_in_process, write_pipeline

    config = write_pipeline(tmp_path / "inputs")
    text = config.read_text().replace("  top_n: 1\n", "  groups: sample\n  population: {n_groups: 4}\n")
    config.write_text(text)
    out = tmp_path / "run"
    run_in_process(config, out, tmp_path / "cache")
    res = InterventionsResult.load(out / "interventions")
    design = res.summary["population"]
    assert design["n_sampled"] == 4 and sum(s["sampled"] for s in design["strata"]) == 4
    ids = [i for s in design["strata"] for i in s["ids"]]
    evaluated = res.verdicts["group_id"].astype(str).tolist()
    assert evaluated[:4] == ids  # the sample first, then the probe groups it did not draw (probe_groups: 1 per task)
    extra = {g["group_id"]: g["probe_tasks"] for g in res.summary["groups"] if g["group_id"] not in ids}
    assert extra and set(extra) == set(evaluated[4:]) and all(extra.values())
    cfg = build_config(ExperimentConfig, config)
    from cooc.result import CoocResult
    from interventions.pipeline import population_design

    again = population_design(CoocResult.load(out / "cooc"), cfg.interventions, cfg.seed)
    assert sorted(again["group_id"]) == sorted(ids)  # the design depends on the seed and groups.csv only
    pop = res.population
    assert {"beats its best single latent", "non-additive (group vs the sum of its members)"} <= set(pop["question"])
    assert (pop.loc[pop["groups"] == "all", "n_sampled"] == 4).all()
    from interventions.markdown import render_report

    text = render_report(res)
    assert "### The population of groups" in text and "sample of **4 of" in text
    assert f"outside the sample and its fractions (chosen for a probe task, not drawn): {evaluated[4]} (" in text
    assert json.loads((out / "interventions" / "summary.json").read_text())["population"]["seed"] == 0
    from reports.html import write_report

    html = write_report(out).read_text()
    assert 'id="population-table"' in html and "A pre-registered sample of 4 of" in html
    assert f"not drawn): {evaluated[4]} (" in html


def test_on_document_clustered_null_groups_the_population_says_yes_at_most_at_the_null_rate():
    """End to end on synthetic groups whose tokens are clustered by document (tests/test_interventions.py's
    ``_synthetic_group`` with ``arm_doc_sd``: per-document offsets shared by every arm, plus each arm's own per-document
    offsets, so the group-vs-comparator differences are clustered too; heavy-tailed noise; 6-24 documents): each
    group's effects go through the stage's own reduction and tests (``group_rows``, with the cross-fitted best single
    latent), then through the population table. Null groups (drawn like their members and controls) answer yes at
    about the null rate; groups with a real effect answer yes, so the question can tell them apart. A test that
    resampled tokens instead of documents would answer yes far more often here."""
    from test_interventions import _run_of_groups, _synthetic_group

    from interventions.config import InterventionsConfig

    rng = np.random.default_rng(7)
    icfg = InterventionsConfig(modes=["zero"], n_controls=2, n_boot=200, steering={"enabled": False}, min_docs=5)
    n_null, n_real = 360, 30
    evals = [_synthetic_group(rng, 0.0 if i < n_null else 1.0, icfg.n_boot, arm_doc_sd=0.3) for i in range(n_null + n_real)]
    eff, _ = _run_of_groups(evals, icfg, rng)
    structure = ["clique"] * (n_null // 2) + ["chain"] * (n_null // 2) + ["pair"] * n_real
    design = pd.DataFrame({"group_id": [e.plan.group.group_id for e in evals], "structure": structure,
                           "group_size": 3, "size_bin": "3-5"})
    design["stratum"] = design["structure"] + "/3-5"
    design["stratum_groups"] = design["stratum"].map({"clique/3-5": 1000, "chain/3-5": 1000, "pair/3-5": 100})
    design["stratum_sampled"] = design["stratum"].map(design["stratum"].value_counts())
    null, real = design.iloc[:n_null].assign(population_groups=2000), design.iloc[n_null:].assign(population_groups=100)

    def row(d, q):
        pop = population_table(d, eff, "zero", icfg.primary_effect, "margin", icfg.alpha, icfg.min_docs)
        return pop[(pop["question"] == q) & (pop["groups"] == "all")].iloc[0]

    for q in ("beats its best single latent", "loses to its best single latent"):
        r = row(null, q)
        assert r["n_tested"] == n_null
        # equal strata weights, so the fraction is k / n: binomial sd at the null rate 0.025 over 360 groups is 0.0082;
        # at most 0.025 + 2.5 sd: k <= 16, which a calibrated test passes with probability 0.99, a rate of 0.05 with
        # 0.37 and a rate of 0.075 with 0.01 (seed 7 gives k 10 and 12)
        assert r["fraction"] <= 0.0455, f"{q}: {r['k']} of {r['n_tested']} null groups said yes"
        assert r["ci_low"] <= 0.025 <= r["ci_high"] or r["k"] == 0
    assert row(real, "beats its best single latent")["fraction"] >= 0.8  # the real effects are found
    assert row(real, "loses to its best single latent")["k"] == 0
