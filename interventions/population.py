"""The population of groups: a pre-registered stratified sample, and the fractions of groups that answer yes.

The reference questions are about the population of groups the co-occurrence stage found: what fraction of groups
are better units than their best single latent, and what fraction act non-additively. A handful of hand-picked groups
cannot answer them, so with ``interventions.groups: sample`` the stage evaluates a seeded sample of groups:

1. :func:`sample_groups` stratifies the groups of OUT/cooc/groups.csv by structure label x size bin
   (``population.size_bins``) and allocates ``population.n_groups`` proportionally to the strata's sizes, every
   non-empty stratum getting at least one when there are enough draws (largest remainders), drawn without replacement
   with a generator seeded only by the seed. The design (every stratum's size N_h, draws n_h, the drawn ids) depends on
   nothing the evaluation computes, is written before it, and is in ``population.csv``'s companion
   ``summary.json["population"]``.
2. :func:`population_table` turns the per-group verdicts into fractions. Each row is one question (a per-group yes/no
   from verdicts.csv, effect_verdicts.csv or additivity.csv) over a set of groups (all, or one structure label):
   ``k`` of ``n`` tested groups answered yes (groups with fewer than min_docs documents are untested, and counted);
   the design-weighted fraction sum_h (N_h / N) k_h / n_h over the strata with a tested group, with a percentile
   interval from a stratified bootstrap (groups resampled within each stratum); and the plain fraction k / n with its
   exact Clopper-Pearson interval (statsmodels). A stratum with one tested group adds no bootstrap variance, so the
   exact interval is the one to read when strata are thin.

A "yes" is a group's own verdict (a BH-adjusted test at alpha over the run's families), so the fractions count groups
where the data *show* the property; a group with a real but small advantage that its documents cannot resolve counts
as a "no". The fractions are lower bounds in that sense, not estimates of the true share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SAMPLE_COLUMNS = ["group_id", "structure", "group_size", "size_bin", "stratum", "stratum_groups", "stratum_sampled"]
POPULATION_COLUMNS = ["question", "groups", "effects", "n_sampled", "n_tested", "k", "fraction", "ci_low", "ci_high",
                      "weighted_fraction", "weighted_ci_low", "weighted_ci_high"]


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
    return pd.concat(out, ignore_index=True)[SAMPLE_COLUMNS] if out else pd.DataFrame(columns=SAMPLE_COLUMNS)


def _effect_family(effect: str) -> str | None:
    """The family of an effect_verdicts row's effect for the population questions: model or task, raw or per_norm."""
    kind = "task" if effect.startswith("probe") else None if effect.startswith("logit") else "model"
    if kind is None:
        return None
    per_norm = "per_norm" in effect
    return f"{kind} effects, {'per unit edit norm' if per_norm else 'raw'}"


def group_answers(design: pd.DataFrame, verdicts: pd.DataFrame, effect_verdicts: pd.DataFrame | None,
                  additivity: pd.DataFrame | None, primary_mode: str, primary_effect: str,
                  additivity_effect: str) -> tuple[pd.DataFrame, dict]:
    """Per sampled group, one column per question: 1.0 (yes), 0.0 (no) or NaN (untested); and each question's
    description (which effects it reads)."""
    ans = design[["group_id", "structure", "stratum"]].copy().set_index("group_id")
    what: dict[str, str] = {}
    v = verdicts[(verdicts["mode"] == primary_mode) & (verdicts["effect"] == primary_effect)].set_index("group_id")
    tested = v["beats_best_single"].isin(["beats", "loses", "tie"]) & ~v["verdict"].astype(str).str.startswith("insufficient")

    def col(name, series, desc):
        ans[name] = series.reindex(ans.index).astype(float)
        what[name] = desc

    prim = f"{primary_mode}/{primary_effect}"
    col("beats its best single latent (primary)", (v["beats_best_single"] == "beats").where(tested), prim)
    col("loses to its best single latent (primary)", (v["beats_best_single"] == "loses").where(tested), prim)
    col("better unit (primary verdict)", v["verdict"].astype(str).str.startswith("better unit").where(tested), prim)
    if additivity is not None and not additivity.empty:
        a = additivity[(additivity["mode"] == primary_mode) & (additivity["effect"] == additivity_effect)]
        a = a.set_index("group_id")["additivity"].astype(str)
        ok = a.isin(["superadditive", "subadditive", "additive"])
        desc = f"{primary_mode}/{additivity_effect}: group vs the sum of its members"
        col("non-additive", a.isin(["superadditive", "subadditive"]).where(ok), desc)
        col("superadditive", (a == "superadditive").where(ok), desc)
        col("subadditive", (a == "subadditive").where(ok), desc)
    if effect_verdicts is not None and not effect_verdicts.empty:
        ev = effect_verdicts.assign(fam=effect_verdicts["effect"].astype(str).map(_effect_family)).dropna(subset=["fam"])
        ev = ev[ev["beats_best_single"].isin(["beats", "loses", "tie"])]
        for fam, sub in ev.groupby("fam", sort=True):
            better = sub.groupby("group_id")["better_unit"].apply(lambda s: bool(s.astype(bool).any()))
            col(f"better unit on any {fam}", better, "any mode; " + ", ".join(sorted(sub["effect"].astype(str)
                                                                                       .str.split(":").str[0].unique())))
    return ans, what


def _fractions(ans: pd.Series, strata: pd.Series, weights: dict[str, float], n_boot: int,
               rng: np.random.Generator, alpha: float) -> dict:
    from statsmodels.stats.proportion import proportion_confint

    ok = ans.notna()
    y, s = ans[ok].to_numpy(dtype=float), strata[ok].to_numpy()
    n, k = len(y), int(y.sum())
    row = {"n_tested": n, "k": k, "fraction": k / n if n else np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "weighted_fraction": np.nan, "weighted_ci_low": np.nan, "weighted_ci_high": np.nan}
    if n == 0:
        return row
    row["ci_low"], row["ci_high"] = (float(x) for x in proportion_confint(k, n, alpha=alpha, method="beta"))
    hs = sorted(set(s))
    w = np.array([weights[h] for h in hs])
    w = w / w.sum()
    idx = [np.flatnonzero(s == h) for h in hs]
    row["weighted_fraction"] = float(sum(wi * y[i].mean() for wi, i in zip(w, idx)))
    boot = np.zeros(n_boot)
    for wi, i in zip(w, idx):  # groups resampled with replacement within each stratum
        boot += wi * y[i][rng.integers(0, len(i), size=(n_boot, len(i)))].mean(1)
    row["weighted_ci_low"], row["weighted_ci_high"] = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    return row


def population_table(design: pd.DataFrame, verdicts: pd.DataFrame, effect_verdicts: pd.DataFrame | None,
                     additivity: pd.DataFrame | None, primary_mode: str, primary_effect: str, additivity_effect: str,
                     alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """POPULATION_COLUMNS: every question over all sampled groups and over each structure label's groups."""
    if design.empty:
        return pd.DataFrame(columns=POPULATION_COLUMNS)
    ans, what = group_answers(design, verdicts, effect_verdicts, additivity, primary_mode, primary_effect,
                              additivity_effect)
    N = design.drop_duplicates("stratum").set_index("stratum")["stratum_groups"].astype(float)
    total = float(N.sum())
    weights = (N / total).to_dict()
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9092]))
    rows = []
    labels = [("all", ans.index)] + [(f"structure {s}", ans.index[ans["structure"] == s])
                                     for s in sorted(ans["structure"].astype(str).unique())]
    for q in what:
        for label, ids in labels:
            sub = ans.loc[ids]
            r = _fractions(sub[q], sub["stratum"], weights, n_boot, rng, alpha)
            rows.append({"question": q, "groups": label, "effects": what[q], "n_sampled": len(sub), **r})
    return pd.DataFrame(rows, columns=POPULATION_COLUMNS)


def design_summary(design: pd.DataFrame, n_population: int, n_groups: int | None, size_bins: list[int], seed: int) -> dict:
    """The sample's design for summary.json: how it was drawn and what it drew, per stratum."""
    strata = (design.groupby("stratum", sort=True)
              .agg(groups=("stratum_groups", "first"), sampled=("stratum_sampled", "first"),
                   ids=("group_id", list)).reset_index())
    return {"n_population": int(n_population), "n_groups": None if n_groups is None else int(n_groups),
            "n_sampled": int(len(design)), "size_bins": size_bin_labels(size_bins), "seed": int(seed),
            "strata": strata.to_dict("records")}
