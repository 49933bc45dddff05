"""From groups to tidy effects and verdicts: :func:`run_interventions` (no run folder needed) and the
group selection the stage uses (:func:`read_groups`, :func:`select_groups`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interventions.config import InterventionsConfig
from interventions.evaluate import (Evaluator, GroupEval, GroupSpec, Pool, best_single, choose_contexts, evaluate_group,
                                    plan_arms, pooled, scan_pool)
from interventions.stats import (COMPARATORS, EFFECTS_COLUMNS, adjust_run, bootstrap_weights, effect_row,
                                 finish_rows, verdicts_frame)
from sources.config import DataSpec, HookSpec, StreamSpec
from sources.errors import ConfigError
from sources.files import stable_hash

log = logging.getLogger(__name__)

ARMS_COLUMNS = ["group_id", "arm", "kind", "mode", "alpha", "alpha_scale", "latents", "n_latents"]


# ----------------------------------------------------------------------------------- groups

def read_groups(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ConfigError("interventions", f"needs the cooc stage's {path}; run python -m experiments.steer "
                                           "(or python -m experiments.cooc) with the same --out first")
    df = pd.read_csv(path)
    missing = [c for c in ("latent", "group_id") if c not in df.columns]
    if missing:
        raise ConfigError("interventions", f"{path} lacks the column(s) {', '.join(missing)}; is it a cooc groups.csv?")
    df["group_id"] = df["group_id"].astype(str)
    return df


def select_groups(df: pd.DataFrame, icfg: InterventionsConfig, d_sae: int | None = None,
                  source: str = "groups.csv") -> list[GroupSpec]:
    """The groups to evaluate: explicit ids (each must exist) or the top_n by ``rank_by``."""
    members = {g: tuple(sorted(int(x) for x in sub["latent"])) for g, sub in df.groupby("group_id", sort=False)}
    structure = {g: str(sub["structure"].iloc[0]) if "structure" in sub else "" for g, sub in df.groupby("group_id", sort=False)}
    if isinstance(icfg.groups, list):
        unknown = [g for g in icfg.groups if g not in members]
        if unknown:
            some = ", ".join(list(members)[:3]) or "none"
            raise ConfigError("interventions.groups", f"group id {unknown[0]!r} does not exist in {source} "
                                                      f"({len(members)} groups, e.g. {some})")
        ids = list(dict.fromkeys(icfg.groups))
    else:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c != "latent"]
        if icfg.rank_by not in numeric:
            raise ConfigError("interventions.rank_by", f"{icfg.rank_by!r} is not a numeric column of {source}; "
                                                       f"choose one of {', '.join(numeric) or '(none)'}")
        per = df.groupby("group_id", sort=False).agg(rank=(icfg.rank_by, "first"), size=("latent", "size"))
        per = per[per["size"] >= icfg.min_size].reset_index()
        per = per.sort_values(["rank", "group_id"], ascending=[False, True], kind="stable")
        ids = per["group_id"].head(icfg.top_n).tolist()
    out = [GroupSpec(g, members[g], structure[g]) for g in ids]
    if d_sae is not None:
        for g in out:
            bad = [m for m in g.members if not 0 <= m < d_sae]
            if bad:
                raise ConfigError("interventions.groups", f"group {g.group_id} has latent {bad[0]} outside the SAE's "
                                                          f"0..{d_sae - 1}; was groups.csv made with another SAE?")
    return out


# ----------------------------------------------------------------------------------- results

@dataclass
class InterventionsResult:
    effects: pd.DataFrame
    """Tidy effects (EFFECTS_COLUMNS), BH-adjusted over the run."""
    verdicts: pd.DataFrame
    """One row per group (stats.VERDICT_COLUMNS)."""
    arms: pd.DataFrame
    """What every arm edits (ARMS_COLUMNS), including the drawn control latents."""
    evals: list[GroupEval]


def _rngs(seed: int, group_id: str, n: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), int(stable_hash(group_id, 12), 16)])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def group_rows(ge: GroupEval, icfg: InterventionsConfig, rng_boot: np.random.Generator,
               rng_fold: np.random.Generator) -> tuple[list[dict], dict]:
    """effects.csv rows (unadjusted) and the verdict inputs of one evaluated group."""
    gid, plan, s = ge.plan.group.group_id, ge.plan, ge.sums
    W = bootstrap_weights(ge.n_docs, icfg.n_boot, rng_boot)
    has_read = icfg.read_layer is not None
    effects = ["ce", "kl", "ce_per_norm", "sqrt_kl_per_norm"] + (["read", "read_per_norm"] if has_read else [])
    rows: list[dict] = []
    chosen = {}

    def add(arm, comp, mode, alpha, eff_list, a, b):
        for eff in eff_list:
            for scope in ("fires", "other"):
                rows.append(effect_row(gid, arm, comp, mode, alpha, eff, scope, a, b, W))

    for mode in icfg.modes:
        arms = {"group": s[("group", mode, None)]}
        for m in plan.tested_members:
            arms[f"member:{m}"] = s[(f"member:{m}", mode, None)]
        best, label = best_single(s, plan.tested_members, mode, icfg.primary_effect, ge.n_docs, rng_fold)
        chosen[mode] = label
        arms["best_single"] = best
        arms["random_groups"] = pooled(s, [f"random_group:{r}" for r in range(len(plan.random_groups))], mode)
        arms["random_directions"] = pooled(s, [f"random_direction:{r}" for r in range(icfg.n_controls)], mode)
        for name, a in arms.items():
            if a is not None:
                add(name, "clean", mode, None, effects, a, None)
        for comp in COMPARATORS:
            if arms.get(comp) is not None:
                add("group", comp, mode, None, effects, arms["group"], arms[comp])
    if icfg.steering.enabled:
        steer_eff = ["ce", "kl"] + (["read"] if has_read else [])
        for a in icfg.steering.alphas:
            rand = pooled(s, [f"steer:random:{r}" for r in range(icfg.steering.n_random)], "steer", a)
            if rand is not None:
                add("steer:random", "clean", "steer", a, steer_eff, rand, None)
            for d in plan.steer_directions:
                arm = s[(f"steer:{d}", "steer", a)]
                add(f"steer:{d}", "clean", "steer", a, steer_eff, arm, None)
                if rand is not None:
                    add(f"steer:{d}", "steer:random", "steer", a, steer_eff, arm, rand)
    rows = finish_rows(rows, icfg.alpha)
    info = {"group_id": gid, "group_size": plan.group.size, "structure": plan.group.structure, "n_docs": ge.n_docs,
            "n_tokens_fires": ge.n_tokens_fires, "n_contexts": ge.n_contexts,
            "best_single_latents": chosen.get(icfg.modes[0], "")}
    return rows, info


def arms_rows(ge: GroupEval) -> list[dict]:
    no_latents = ("steer_random", "random_direction")
    out = []
    for a in ge.plan.arms:
        out.append({"group_id": ge.plan.group.group_id, "arm": a.name, "kind": a.kind, "mode": a.mode,
                    "alpha": np.nan if a.alpha is None else a.alpha, "alpha_scale": a.scale if a.alpha is not None else np.nan,
                    "latents": " ".join(str(x) for x in a.latents) if a.kind not in no_latents else "",
                    "n_latents": len(a.latents) if a.kind not in no_latents else 0})
    return out


def run_interventions(model, sae, hook: HookSpec, data: DataSpec, stream: StreamSpec, groups: list[GroupSpec],
                      icfg: InterventionsConfig, threshold_F: np.ndarray, occ_F: np.ndarray | None = None,
                      seed: int = 0, progress: bool = True) -> InterventionsResult:
    """Evaluate ``groups`` on the model: the whole stage without a run folder.

    ``threshold_F`` is the per-latent firing threshold of the cooc stage; ``occ_F`` the firing counts used
    to match control groups on frequency (default: the counts of the pool scan).
    """
    from interventions.edits import effective_decoder
    from interventions.forward import check_read_layer

    check_read_layer(model, hook, icfg.read_layer)
    seed = icfg.seed if icfg.seed is not None else seed
    if data.holdout_every > 0:
        data = data.model_copy(update={"holdout_only": True})
    if not groups:
        return InterventionsResult(pd.DataFrame(columns=EFFECTS_COLUMNS), verdicts_frame(pd.DataFrame(columns=EFFECTS_COLUMNS), [],
                                   icfg.modes[0], icfg.primary_effect, icfg.alpha, icfg.min_docs),
                                   pd.DataFrame(columns=ARMS_COLUMNS), [])
    pool: Pool = scan_pool(model, sae, data, hook, stream, groups, threshold_F, icfg.pool_tokens, progress=progress)
    occ = pool.count_F if occ_F is None else np.asarray(occ_F)
    if occ.shape[0] != pool.count_F.shape[0]:
        raise ConfigError("interventions", f"occurrences has {occ.shape[0]} latents but the SAE has {pool.count_F.shape[0]}; "
                                           "was the cooc stage run with another SAE?")
    W_eff = effective_decoder(sae).to(model.device)
    ev = Evaluator(model, sae, hook, pool, threshold_F, icfg)
    rows, infos, arms, evals = [], [], [], []
    for g in groups:
        r_ctx, r_plan, r_boot, r_fold = _rngs(seed, g.group_id, 4)
        contexts = choose_contexts(pool, g, icfg.max_tokens, icfg.tail_tokens, r_ctx)
        if not contexts:
            log.warning("group %s never fires in the %d pool tokens; no verdict", g.group_id, pool.n_tokens)
            infos.append({"group_id": g.group_id, "group_size": g.size, "structure": g.structure, "n_docs": 0,
                          "n_tokens_fires": 0, "n_contexts": 0, "best_single_latents": ""})
            continue
        plan = plan_arms(g, pool, W_eff, occ, icfg, r_plan)
        ge = evaluate_group(model, sae, hook, plan, contexts, ev, progress=progress)
        g_rows, info = group_rows(ge, icfg, r_boot, r_fold)
        rows += g_rows
        infos.append(info)
        arms += arms_rows(ge)
        evals.append(ge)
        log.info("group %s: %d arms on %d contexts (%d documents, %d tokens where it fires)", g.group_id, len(plan.arms),
                 ge.n_contexts, ge.n_docs, ge.n_tokens_fires)
    effects = adjust_run(pd.DataFrame(rows, columns=[c for c in EFFECTS_COLUMNS if c != "p_adj"]).assign(p_adj=np.nan))
    verdicts = verdicts_frame(effects, infos, icfg.modes[0], icfg.primary_effect, icfg.alpha, icfg.min_docs)
    return InterventionsResult(effects, verdicts, pd.DataFrame(arms, columns=ARMS_COLUMNS), evals)
