"""The population of groups: a pre-registered stratified sample, and the fractions of groups that answer yes.

The reference questions are about the population of groups the co-occurrence stage found: what fraction of groups
are better units than their best single latent, and what fraction act non-additively. A handful of hand-picked groups
cannot answer them, so with ``interventions.groups: sample`` the stage evaluates a seeded sample of groups:

1. :func:`sample_groups` stratifies the groups of OUT/cooc/groups.csv by structure label x size bin
   (``population.size_bins``) and allocates ``population.n_groups`` proportionally to the strata's sizes, every
   non-empty stratum getting at least one when there are enough draws (largest remainders), drawn without replacement
   with a generator seeded only by the seed. The design is a function of the seed, the config and groups.csv alone,
   fixed before any evaluation (the stage logs it when it starts and records it in ``summary.json["population"]``).
2. :func:`population_table` turns each sampled group's own tests into fractions. A question is one pre-specified
   comparison in the primary mode (the group vs its best single latent on the primary effect, on kl, margin and each
   task's logit-level effect per norm; vs the sum of its members for non-additivity). A group answers yes when *its
   own* test at level alpha finds the difference on that side of 0 (unadjusted p < alpha and the interval on that
   side): unlike the run's BH-adjusted verdicts, a group's answer then does not depend on which other groups were
   drawn. Under "no group has the property" a group answers yes at most at ``null_rate`` (alpha / 2 for a one-sided
   question), which each row states, so a fraction near it reads as "no".
   Groups with fewer than min_docs documents (or without an estimate) are untested: the fraction is among testable
   groups, and ``untested_share`` says how much of the population that leaves out.
   The fraction is the stratified estimator sum_h (N_h / N) ybar_h with its without-replacement variance and a
   Korn-Graubard interval (:func:`stratified_fraction`); ``sample_fraction`` k / n is the plain share in the sample,
   which over-represents the small strata and is not an estimate for the population.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interventions.effects import TOKEN_CONTROLS, outcome

SAMPLE_COLUMNS = ["group_id", "structure", "group_size", "size_bin", "stratum", "stratum_groups", "stratum_sampled",
                  "population_groups"]
POPULATION_COLUMNS = ["question", "groups", "effect", "n_sampled", "n_tested", "k", "sample_fraction", "fraction", "se",
                      "ci_low", "ci_high", "untested_share", "null_rate"]


def size_bin_labels(size_bins: list[int]) -> list[str]:
    """Labels of the size bins whose lower edges are ``size_bins`` (sorted): ``2``, ``3-5``, ..., ``21+``."""
    edges = sorted(size_bins)
    out = []
    for lo, hi in zip(edges, [*edges[1:], None]):
        out.append(f"{lo}+" if hi is None else (str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"))
    return out


def size_bin(sizes: np.ndarray, size_bins: list[int]) -> np.ndarray:
    """The size bin label of each size (sizes below the first edge get the first bin)."""
    edges = np.array(sorted(size_bins))
    idx = np.clip(np.searchsorted(edges, np.asarray(sizes), side="right") - 1, 0, len(edges) - 1)
    return np.array(size_bin_labels(list(edges)), dtype=object)[idx]


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Draws per stratum: proportional to ``sizes`` (largest remainders), at least one per stratum when ``n`` is at
    least the number of strata, never more than a stratum holds; all of them when ``n`` covers every group."""
    total = sum(sizes.values())
    if n >= total:
        return dict(sizes)
    keys = sorted(sizes, key=lambda k: (-sizes[k], k))
    base = {k: 0 for k in keys}
    if n >= len(keys):
        base = {k: 1 for k in keys}
    left = n - sum(base.values())
    while left > 0:
        room = {k: sizes[k] - base[k] for k in keys if sizes[k] > base[k]}
        share = {k: left * sizes[k] / sum(sizes[j] for j in room) for k in room}
        floor = {k: min(int(np.floor(share[k])), room[k]) for k in room}
        if sum(floor.values()) == 0:  # fewer draws left than strata with room: the largest remainders get one each
            for k in sorted(room, key=lambda k: (-(share[k] - floor[k]), -sizes[k], k))[:left]:
                base[k] += 1
            break
        for k, v in floor.items():
            base[k] += v
        left = n - sum(base.values())
    return base


def sample_groups(groups: pd.DataFrame, n_groups: int | None, size_bins: list[int], seed: int) -> pd.DataFrame:
    """The stratified sample of ``groups`` (one row per group: group_id, structure, group_size), SAMPLE_COLUMNS,
    ordered by stratum then draw. ``n_groups`` None: every group (a census; every weight is then 1)."""
    g = groups[["group_id", "structure", "group_size"]].drop_duplicates("group_id").copy()
    g["group_id"] = g["group_id"].astype(str)
    g["size_bin"] = size_bin(g["group_size"].to_numpy(), size_bins)
    g["stratum"] = g["structure"].astype(str) + "/" + g["size_bin"].astype(str)
    sizes = g.groupby("stratum").size().to_dict()
    take = allocate(sizes, len(g) if n_groups is None else int(n_groups))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9091]))
    out = []
    for stratum in sorted(sizes):
        sub = g[g["stratum"] == stratum].sort_values("group_id", kind="stable")
        if take[stratum]:
            pick = sub.iloc[np.sort(rng.choice(len(sub), size=take[stratum], replace=False))]
            out.append(pick.assign(stratum_groups=sizes[stratum], stratum_sampled=take[stratum]))
        else:
            rng.random()  # keep later strata's draws independent of whether this one was drawn from
    if not out:
        return pd.DataFrame(columns=SAMPLE_COLUMNS)
    return pd.concat(out, ignore_index=True).assign(population_groups=len(g))[SAMPLE_COLUMNS]


def _one(e: pd.DataFrame, comparator: str, effect: str) -> pd.DataFrame:
    """Per group: the group-vs-``comparator`` row of ``effect`` at the group's tokens (index group_id)."""
    r = e[(e["arm"] == "group") & (e["comparator"] == comparator) & (e["effect"] == effect)]
    return r.drop_duplicates("group_id").set_index("group_id")


def _detect(r: pd.DataFrame, sign: int, alpha: float, min_docs: int) -> pd.Series:
    """1.0 where the group's own test at level alpha finds the difference on the ``sign`` side of 0 (the verdict rule,
    :func:`interventions.effects.outcome`, on the unadjusted p), 0.0 where it does not, NaN where it is not testable
    (fewer than min_docs documents, or no estimate)."""
    want = "beats" if sign > 0 else "loses"
    said = pd.Series([outcome({**row, "p_adj": row["p_value"]}, alpha) for row in r.to_dict("records")], index=r.index,
                     dtype=object)
    ok = (said != "untested") & (r["n_docs"] >= min_docs)
    return (said == want).astype(float).where(ok)


def group_answers(design: pd.DataFrame, effects: pd.DataFrame, mode: str, primary_effect: str, additivity_effect: str,
                  alpha: float, min_docs: int, controls: tuple[str, ...],
                  task_questions: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per sampled group, one column per question: 1.0 (yes), 0.0 (no) or NaN (not testable); and each question's
    (effect, rate of 'yes' per group when the group has no such property). ``task_questions``: also the task effects'
    questions (only when every sampled group was read on the tasks: with ``tasks.groups: probe`` the groups that were
    are the ones chosen for a task, not a sample)."""
    ans = design[["group_id", "structure", "stratum"]].copy().set_index("group_id")
    what: dict[str, tuple[str, float]] = {}
    e = effects[(effects["mode"] == mode) & (effects["scope"] == "fires")].assign(group_id=lambda d: d["group_id"].astype(str))

    def col(name, series, effect, null_rate):
        ans[name] = series.reindex(ans.index).astype(float)
        what[name] = (effect, null_rate)

    best = _one(e, "best_single", primary_effect)
    col("beats its best single latent", _detect(best, 1, alpha, min_docs), primary_effect, alpha / 2)
    col("loses to its best single latent", _detect(best, -1, alpha, min_docs), primary_effect, alpha / 2)
    parts = [_detect(best, 1, alpha, min_docs)] + [_detect(_one(e, c, primary_effect), 1, alpha, min_docs)
                                                   for c in controls]
    unit = pd.concat(parts, axis=1)
    col("better unit: beats its best single latent and every control at its tokens",
        unit.min(axis=1, skipna=False), primary_effect, alpha / 2)
    add = _one(e, "sum_of_members", additivity_effect)
    if not add.empty:
        # larger or smaller in magnitude than the sum, in the sum's direction (effects.additivity_label's rule): where
        # the sum of the members' effects is negative, group - sum < 0 means a larger effect
        summed = e[(e["arm"] == "sum_of_members") & (e["comparator"] == "clean") & (e["effect"] == additivity_effect)]
        flip = (summed.drop_duplicates("group_id").set_index("group_id")["estimate"].reindex(add.index) < 0).to_numpy()
        up, down = _detect(add, 1, alpha, min_docs), _detect(add, -1, alpha, min_docs)
        sup, sub = up.where(~flip, down), down.where(~flip, up)
        col("non-additive (group vs the sum of its members)", (sup + sub).clip(upper=1), additivity_effect, alpha)
        col("superadditive", sup, additivity_effect, alpha / 2)
        col("subadditive", sub, additivity_effect, alpha / 2)
    secondary = [x for x in ("kl", "margin") if x != primary_effect]
    tasks = sorted({str(x) for x in e["effect"].unique() if str(x).startswith("probe_logit_per_norm:")}) if task_questions else []
    for effect in secondary + tasks:
        r = _one(e, "best_single", effect)
        if not r.empty:
            col(f"beats its best single latent on {effect}", _detect(r, 1, alpha, min_docs), effect, alpha / 2)
    return ans, what


def stratified_fraction(y: np.ndarray, strata: np.ndarray, N_h: dict[str, float], alpha: float) -> dict:
    """The design-weighted fraction of yes among tested groups, its variance and a Korn-Graubard interval.

    ``y``: 0/1 of the tested groups; ``strata``: their strata; ``N_h``: every stratum's number of groups in the
    population. The estimate is sum_h W_h ybar_h with W_h = N_h / N over the strata holding a tested group; its
    variance sum_h W_h^2 (1 - n_h / N_h) s_h^2 / n_h (without-replacement sampling), with s_h^2 the sample variance,
    or the Bernoulli maximum 0.25 for a stratum with a single tested group out of several (whose variance the sample
    cannot show). The interval is Clopper-Pearson's at the effective sample size p(1 - p) / var (Korn & Graubard
    1998), capped at the number of tested groups."""
    from scipy.stats import beta

    hs = sorted(set(strata.tolist()))
    n = len(y)
    if n == 0:
        return {"fraction": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    W = np.array([N_h[h] for h in hs], dtype=float)
    W = W / W.sum()
    p, var = 0.0, 0.0
    for w, h in zip(W, hs):
        yh = y[strata == h]
        nh, Nh = len(yh), float(N_h[h])
        p += w * yh.mean()
        s2 = yh.var(ddof=1) if nh > 1 else (0.0 if Nh <= 1 else 0.25)
        var += w * w * max(0.0, 1 - nh / Nh) * s2 / nh
    n_eff = min(float(n), p * (1 - p) / var) if var > 0 and 0 < p < 1 else float(n)
    x = n_eff * p
    lo = 0.0 if x <= 0 else float(beta.ppf(alpha / 2, x, n_eff - x + 1))
    hi = 1.0 if x >= n_eff else float(beta.ppf(1 - alpha / 2, x + 1, n_eff - x))
    return {"fraction": float(p), "se": float(np.sqrt(var)), "ci_low": lo, "ci_high": hi}


def population_table(design: pd.DataFrame, effects: pd.DataFrame, mode: str, primary_effect: str,
                     additivity_effect: str, alpha: float = 0.05, min_docs: int = 5,
                     controls: tuple[str, ...] = TOKEN_CONTROLS, task_questions: bool = True) -> pd.DataFrame:
    """POPULATION_COLUMNS: every question over all sampled groups and over each structure label's groups (``controls``:
    the controls at the group's tokens a better unit must beat, the verdict rule's; ``task_questions``: as in
    :func:`group_answers`)."""
    if design.empty:
        return pd.DataFrame(columns=POPULATION_COLUMNS)
    ans, what = group_answers(design, effects, mode, primary_effect, additivity_effect, alpha, min_docs, controls,
                              task_questions)
    N_h = design.drop_duplicates("stratum").set_index("stratum")["stratum_groups"].astype(float).to_dict()
    rows = []
    labels = [("all", ans.index)] + [(f"structure {s}", ans.index[ans["structure"] == s])
                                     for s in sorted(ans["structure"].astype(str).unique())]
    for q, (effect, null_rate) in what.items():
        for label, ids in labels:
            sub = ans.loc[ids]
            ok = sub[q].notna()
            y, st = sub.loc[ok, q].to_numpy(dtype=float), sub.loc[ok, "stratum"].to_numpy()
            frac = stratified_fraction(y, st, N_h, alpha)
            hs = sorted(set(sub["stratum"]))
            W = np.array([N_h[h] for h in hs]) / sum(N_h[h] for h in hs)
            untested = float(sum(w * (1 - sub.loc[sub["stratum"] == h, q].notna().mean()) for w, h in zip(W, hs)))
            rows.append({"question": q, "groups": label, "effect": effect, "n_sampled": len(sub), "n_tested": int(ok.sum()),
                         "k": int(y.sum()), "sample_fraction": y.mean() if len(y) else np.nan, **frac,
                         "untested_share": untested, "null_rate": null_rate})
    return pd.DataFrame(rows, columns=POPULATION_COLUMNS)


def design_summary(design: pd.DataFrame, n_groups: int | None, size_bins: list[int], seed: int) -> dict:
    """The sample's design for summary.json: how it was drawn and what it drew, per stratum."""
    strata = (design.groupby("stratum", sort=True)
              .agg(groups=("stratum_groups", "first"), sampled=("stratum_sampled", "first"),
                   ids=("group_id", list)).reset_index())
    n_population = int(design["population_groups"].iloc[0]) if len(design) else 0
    return {"n_population": n_population, "n_groups": None if n_groups is None else int(n_groups),
            "n_sampled": int(len(design)), "size_bins": size_bin_labels(size_bins), "seed": int(seed),
            "strata": strata.to_dict("records")}
