"""The population of groups (interventions.population): the stratified sample and the fractions with intervals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from interventions.population import allocate, population_table, sample_groups, size_bin, size_bin_labels


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


def _frames(design: pd.DataFrame, yes: dict[str, bool], untested: set[str] = frozenset()):
    """verdicts / effect_verdicts / additivity frames answering ``yes`` per group."""
    v, ev, add = [], [], []
    for gid in design["group_id"]:
        t = gid not in untested
        y = bool(yes[gid])
        v.append({"group_id": gid, "mode": "zero", "effect": "sqrt_kl_per_norm",
                  "beats_best_single": ("beats" if y else "tie") if t else "untested",
                  "verdict": ("better unit: ..." if y else "no better than its best single latent") if t else
                  "insufficient data (1 documents < min_docs 5)"})
        ev.append({"group_id": gid, "mode": "zero", "effect": "kl", "beats_best_single": "beats" if y else "tie",
                   "better_unit": y})
        ev.append({"group_id": gid, "mode": "zero", "effect": "probe_per_norm:t", "beats_best_single": "tie",
                   "better_unit": False})
        add.append({"group_id": gid, "mode": "zero", "effect": "margin",
                    "additivity": ("superadditive" if y else "additive") if t else "untested"})
    return pd.DataFrame(v), pd.DataFrame(ev), pd.DataFrame(add)


def test_counts_exact_intervals_and_weights_match_an_independent_computation():
    g = _groups()
    design = sample_groups(g, 30, [2, 3, 6, 11, 21], 3)
    rng = np.random.default_rng(0)
    yes = {gid: bool(rng.random() < 0.4) for gid in design["group_id"]}
    untested = set(design["group_id"].iloc[:2])
    v, ev, add = _frames(design, yes, untested)
    pop = population_table(design, v, ev, add, "zero", "sqrt_kl_per_norm", "margin", n_boot=500, seed=0)
    row = pop[(pop["question"] == "beats its best single latent (primary)") & (pop["groups"] == "all")].iloc[0]
    tested = design[~design["group_id"].isin(untested)]
    k = sum(yes[i] for i in tested["group_id"])
    assert (row["n_sampled"], row["n_tested"], row["k"]) == (30, 28, k)
    ci = binomtest(k, 28).proportion_ci(confidence_level=0.95, method="exact")
    assert row["ci_low"] == pytest.approx(ci.low) and row["ci_high"] == pytest.approx(ci.high)
    # the design weight of a stratum is its share of all groups; a stratum's fraction is over its tested groups
    t = tested.assign(y=[yes[i] for i in tested["group_id"]])
    per = t.groupby("stratum").agg(p=("y", "mean"), N=("stratum_groups", "first"))
    assert row["weighted_fraction"] == pytest.approx((per["p"] * per["N"]).sum() / per["N"].sum())
    assert row["weighted_ci_low"] <= row["weighted_fraction"] <= row["weighted_ci_high"]
    nonadd = pop[(pop["question"] == "non-additive") & (pop["groups"] == "all")].iloc[0]
    assert nonadd["k"] == k and nonadd["n_tested"] == 28
    fam = pop[pop["question"].str.startswith("better unit on any model effects, raw") & (pop["groups"] == "all")].iloc[0]
    assert fam["k"] == sum(yes.values()) and fam["n_tested"] == 30  # effect verdicts of every group
    task = pop[pop["question"].str.startswith("better unit on any task effects, per unit") & (pop["groups"] == "all")].iloc[0]
    assert task["k"] == 0
    by_label = pop[(pop["question"] == "beats its best single latent (primary)") & (pop["groups"] == "structure pair")].iloc[0]
    pairs = tested[tested["structure"] == "pair"]["group_id"]
    assert by_label["n_tested"] == len(pairs) and by_label["k"] == sum(yes[i] for i in pairs)


def test_the_weighted_fraction_is_unbiased_for_the_population_where_the_plain_one_is_not():
    """A population whose small strata answer yes far more often than its large ones: the sample gives each small
    stratum at least one draw, so the plain fraction over-represents them. Over many seeded samples the design-weighted
    fraction is centred on the true population fraction and its interval covers it near the nominal rate; the plain
    fraction is biased. (Swapping the weights for equal ones makes this test fail.)"""
    g = _groups(1)
    bins = [2, 3, 6, 11, 21]
    g["stratum"] = g["structure"] + "/" + size_bin(g["group_size"].to_numpy(), bins)
    N = g.groupby("stratum").size()
    rng = np.random.default_rng(5)
    rate = {h: (0.9 if N[h] <= 6 else 0.1) for h in N.index}
    truth = {gid: bool(rng.random() < rate[h]) for gid, h in zip(g["group_id"], g["stratum"])}
    true_fraction = np.mean(list(truth.values()))
    w, plain, cover = [], [], []
    for s in range(150):
        design = sample_groups(g, 30, bins, s)
        v, ev, add = _frames(design, truth)
        row = population_table(design, v, None, None, "zero", "sqrt_kl_per_norm", "margin", n_boot=200, seed=s)
        row = row[(row["question"] == "beats its best single latent (primary)") & (row["groups"] == "all")].iloc[0]
        w.append(row["weighted_fraction"])
        plain.append(row["fraction"])
        cover.append(row["weighted_ci_low"] <= true_fraction <= row["weighted_ci_high"])
    assert abs(np.mean(w) - true_fraction) < 0.02, (np.mean(w), true_fraction)
    assert np.mean(plain) - true_fraction > 0.05, (np.mean(plain), true_fraction)
    assert np.mean(cover) > 0.85, np.mean(cover)


def test_a_stage_run_with_groups_sample_writes_the_design_and_the_fractions(tmp_path):
    from experiments.cli import build_config
    from experiments.config import ExperimentConfig
    from interventions.result import InterventionsResult
    from tiny_pipeline import run_in_process, write_pipeline

    config = write_pipeline(tmp_path / "inputs")
    text = config.read_text().replace("  top_n: 1\n", "  groups: sample\n  population: {n_groups: 4, n_boot: 200}\n")
    config.write_text(text)
    out = tmp_path / "run"
    run_in_process(config, out, tmp_path / "cache")
    res = InterventionsResult.load(out / "interventions")
    design = res.summary["population"]
    assert design["n_sampled"] == 4 and sum(s["sampled"] for s in design["strata"]) == 4
    ids = [i for s in design["strata"] for i in s["ids"]]
    assert sorted(ids) == sorted(res.verdicts["group_id"].astype(str))
    cfg = build_config(ExperimentConfig, config)
    from cooc.result import CoocResult
    from interventions.pipeline import population_design

    again = population_design(CoocResult.load(out / "cooc"), cfg.interventions, cfg.seed)
    assert sorted(again["group_id"]) == sorted(ids)  # the design depends on the seed and groups.csv only
    pop = res.population
    assert {"beats its best single latent (primary)", "non-additive"} <= set(pop["question"])
    assert (pop.loc[pop["groups"] == "all", "n_sampled"] == 4).all()
    from interventions.markdown import render_report

    text = render_report(res)
    assert "### The population of groups" in text and "sample of **4 of" in text
    assert json.loads((out / "interventions" / "summary.json").read_text())["population"]["seed"] == 0
