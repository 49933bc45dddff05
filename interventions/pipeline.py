"""From groups to tidy effects and verdicts: :func:`run_interventions` (no run folder needed; returns an
:class:`interventions.result.InterventionsResult`) and the group selection the stage uses (:func:`select_groups`)."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cooc.result import CoocResult
from interventions.config import InterventionsConfig
from interventions.modes import MODES, needs
from interventions.arms import (Evaluator, GroupEval, GroupSpec, Pool, choose_contexts, evaluate_group, plan_arms, pooled,
                                scan_pool)
from interventions.effects import (ADDITIVE_EFFECTS, ADDITIVITY_COMPARATORS, COMPARATORS, EFFECTS_COLUMNS, DocSums,
                                   additivity_frame, adjust_run, bootstrap_weights, effect_row,
                                   effect_verdicts_frame, finish_rows, verdicts_frame)
from sources.config import HookSpec, require_known_groups
from sources.errors import ConfigError
from sources.sae_view import as_view
from sources.session import Session
from interventions.result import InterventionsResult
from sources.files import atomic_path, stable_hash

log = logging.getLogger(__name__)

ARMS_COLUMNS = ["group_id", "arm", "kind", "mode", "alpha", "alpha_scale", "latents", "n_latents"]


# ----------------------------------------------------------------------------------- groups

def population_design(cooc: CoocResult, icfg: InterventionsConfig, seed: int) -> pd.DataFrame:
    """The pre-registered sample of groups of ``groups: sample`` (:func:`interventions.population.sample_groups` over
    the groups with at least ``min_size`` members; seeded by ``interventions.seed``, else the experiment's)."""
    from interventions.population import sample_groups

    df = cooc.groups_table
    per = df.groupby("group_id", sort=True).agg(structure=("structure", "first"), group_size=("latent", "size")).reset_index()
    per = per[per["group_size"] >= icfg.min_size]
    s = icfg.seed if icfg.seed is not None else seed
    return sample_groups(per, icfg.population.n_groups, icfg.population.size_bins, s)


def select_groups(cooc: CoocResult, icfg: InterventionsConfig, d_sae: int | None = None,
                  probe_groups: pd.DataFrame | None = None, seed: int = 0) -> list[GroupSpec]:
    """The groups of ``cooc`` to evaluate: explicit ids (each must exist); with ``sample``, the stratified sample of
    :func:`population_design`; or the top_n by ``rank_by``. With ``auto`` and ``sample`` they are followed by the
    ``icfg.probe_groups`` most enriched groups per task among those the probes stage selected (``probe_groups``:
    :meth:`probes.result.ProbesResult.selected_groups`, with columns task, group_id, enrichment, selected) that are not
    already chosen; each group records the tasks it was chosen for (``GroupSpec.probe_tasks``). A probe group added to a
    sample is evaluated like the others but is not part of the population's fractions (it was not drawn)."""
    df, source = cooc.groups_table, cooc.groups_csv
    members = cooc.members()
    structure = cooc.structure()
    per = df.groupby("group_id", sort=False).agg(size=("latent", "size"))
    eligible = set(per.index[per["size"] >= icfg.min_size].astype(str))
    if icfg.groups == "sample":
        ids = population_design(cooc, icfg, seed)["group_id"].tolist()
    elif isinstance(icfg.groups, list):
        require_known_groups("interventions.groups", icfg.groups, members, source)
        ids = list(dict.fromkeys(icfg.groups))
    else:
        numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and c != "latent"]
        if icfg.rank_by not in numeric:
            raise ConfigError("interventions.rank_by", f"{icfg.rank_by!r} is not a numeric column of {source}; "
                                                       f"choose one of {', '.join(numeric) or '(none)'}")
        ranked = df.groupby("group_id", sort=False).agg(rank=(icfg.rank_by, "first"))
        ranked = ranked[ranked.index.astype(str).isin(eligible)].reset_index()
        ranked = ranked.sort_values(["rank", "group_id"], ascending=[False, True], kind="stable")
        ids = ranked["group_id"].head(icfg.top_n).tolist()
    probe_tasks: dict[str, list[str]] = {}
    if icfg.groups in ("auto", "sample") and icfg.probe_groups and probe_groups is not None and not probe_groups.empty:
        pg = probe_groups.assign(group_id=probe_groups["group_id"].astype(str))
        sel = pg[pg["selected"].astype(bool) & pg["group_id"].isin(eligible)].sort_values(
            ["task", "enrichment", "group_id"], ascending=[True, False, True], kind="stable")
        for task, sub in sel.groupby("task", sort=True):
            for g in sub["group_id"].head(icfg.probe_groups):
                probe_tasks.setdefault(g, []).append(str(task))
                if g not in ids:
                    ids.append(g)
    out = [GroupSpec(g, members[g], structure[g], tuple(probe_tasks.get(g, ()))) for g in ids]
    if d_sae is not None:
        for g in out:
            bad = [m for m in g.members if not 0 <= m < d_sae]
            if bad:
                raise ConfigError("interventions.groups", f"group {g.group_id} has latent {bad[0]} outside the SAE's "
                                                          f"0..{d_sae - 1}; was groups.csv made with another SAE?")
    return out


# ----------------------------------------------------------------------------------- results

def _rngs(seed: int, group_id: str, n: int) -> list[np.random.Generator]:
    ss = np.random.SeedSequence([int(seed), int(stable_hash(group_id, 12), 16)])
    return [np.random.default_rng(s) for s in ss.spawn(n)]


def _draws(s: dict, names: list[str], mode: str) -> list[DocSums] | None:
    out = [s[(n, mode, None)] for n in names if (n, mode, None) in s]
    return out or None


def _ablation_arms(s: dict, plan, mode: str) -> dict:
    """The ablation arms of one mode as per-document sums: group, members, each control's draws (lists), the sum of
    the members' effects (when every member was run) and the sums of complementary halves (a list, one per split)."""
    group = s[("group", mode, None)]
    arms: dict = {"group": group}
    for m in plan.tested_members:
        arms[f"member:{m}"] = s[(f"member:{m}", mode, None)]
    arms["cofiring_latents"] = _draws(s, [f"cofiring:{r}" for r in range(len(plan.cofiring_groups))], mode)
    arms["random_spans"] = _draws(s, [f"random_span:{r}" for r in range(plan.n_draws)], mode)
    arms["random_directions"] = _draws(s, [f"random_direction:{r}" for r in range(plan.n_draws)], mode)
    arms["random_groups"] = _draws(s, [f"random_group:{r}" for r in range(len(plan.random_groups))], mode)
    # the sum of members (and halves) is the group's edit only where edits add: latent modes (each latent's change goes
    # through the linear decoder); projecting out a span is not the sum of projecting out its non-orthogonal directions
    additive_mode = MODES[mode].edits == "latents"
    if additive_mode and set(plan.tested_members) == set(plan.group.members) and len(plan.group.members) > 1:
        # per-token sums on the group's tokens: the members' sums added, the group's token counts
        arms["sum_of_members"] = pooled(s, [f"member:{m}" for m in plan.group.members], mode).with_counts_of(group)
    halves = [pooled(s, [f"half:{k}a", f"half:{k}b"], mode).with_counts_of(group)
              for k in range(len(plan.halves)) if (f"half:{k}a", mode, None) in s] if additive_mode else []
    arms["halves"] = halves or None
    return arms


def _comparisons(add, arms: dict, mode: str, effects: list[str], additive: list[str], members, n_docs: int,
                 fold: list, chosen: dict, key: str = "") -> None:
    """Rows of one mode: every arm and control vs clean, the group vs each control, vs the sum of its members and
    its halves (``additive`` effects, at its tokens), and vs its best single member chosen per effect (cross-fitted
    on ``fold``; the choice goes into ``chosen[(key, mode, effect)]``)."""
    from interventions.arms import best_single

    sums = {(n, mode, None): a for n, a in arms.items() if n.startswith("member:")}
    for name, a in arms.items():
        if a is None:
            continue
        if name in ADDITIVITY_COMPARATORS:
            add(name, "clean", mode, None, additive, a, None, ("fires",))
        else:
            add(name, "clean", mode, None, effects, a, None)
    for comp in COMPARATORS[1:]:
        if arms.get(comp) is not None:
            add("group", comp, mode, None, effects, arms["group"], arms[comp])
    for comp in ADDITIVITY_COMPARATORS:
        if arms.get(comp) is not None:
            add("group", comp, mode, None, additive, arms["group"], arms[comp], ("fires",))
    for e in effects:
        best, label = best_single(sums, members, mode, e, n_docs, fold=fold)
        chosen[(key, mode, e)] = label
        if best is not None:
            add("best_single", "clean", mode, None, [e], best, None)
            add("group", "best_single", mode, None, [e], arms["group"], best)


def _adder(rows: list, gid: str, W: np.ndarray):
    def add(arm, comp, mode, alpha, eff_list, a, b, scopes=("fires", "other")):
        for eff in eff_list:
            for scope in scopes:
                rows.append(effect_row(gid, arm, comp, mode, alpha, eff, scope, a, b, W))
    return add


def task_rows(ge: GroupEval, icfg: InterventionsConfig, rng_boot: np.random.Generator,
              rng_fold: np.random.Generator) -> list[dict]:
    """effects.csv rows (unadjusted) of the group's task effects (``probe:<target>``, ``probe_per_norm:<target>``).

    Each task family has its own documents (the probe windows), hence its own bootstrap weights; the best single
    member is cross-fitted on the task effect itself (over the task's documents)."""
    from interventions.arms import document_halves
    from interventions.tasks import effect_name

    gid, plan = ge.plan.group.group_id, ge.plan
    rows: list[dict] = []
    for te in ge.tasks:
        W = bootstrap_weights(te.n_docs, icfg.n_boot, rng_boot)
        fold = [document_halves(te.n_docs, rng_fold) for _ in range(icfg.n_best_splits)]
        add = _adder(rows, gid, W)
        for target, s in te.sums.items():
            eff, eff_pn = effect_name(target), effect_name(target, per_norm=True)
            task_effects = [eff, eff_pn]
            if any(v.has(effect_name(target, amnesic=True)) for v in s.values()):
                task_effects += [effect_name(target, amnesic=True), effect_name(target, per_norm=True, amnesic=True)]
            if any(v.has(effect_name(target, logit=True)) for v in s.values()):
                task_effects += [effect_name(target, logit=True), effect_name(target, per_norm=True, logit=True)]
            for mode in icfg.modes:
                arms = _ablation_arms(s, plan, mode)
                arms.pop("sum_of_members", None), arms.pop("halves", None)  # a readout loss does not add
                chosen: dict = {}
                _comparisons(add, arms, mode, task_effects, [], plan.tested_members, te.n_docs, fold, chosen)
                te.best_single[f"{target}|{mode}"] = chosen[("", mode, eff)]
                te.best_single_effects.update({(m, e): v for (_, m, e), v in chosen.items()})
            if icfg.steering.enabled and icfg.tasks.steering:
                for a in icfg.steering.alphas:
                    rand = pooled(s, [f"steer:random:{r}" for r in range(icfg.steering.n_random)], "steer", a)
                    if rand is not None:
                        add("steer:random", "clean", "steer", a, [eff], rand, None)
                    for d in plan.steer_directions:
                        if (f"steer:{d}", "steer", a) not in s:
                            continue
                        arm = s[(f"steer:{d}", "steer", a)]
                        add(f"steer:{d}", "clean", "steer", a, [eff], arm, None)
                        if rand is not None:
                            add(f"steer:{d}", "steer:random", "steer", a, [eff], arm, rand)
    return rows


def group_rows(ge: GroupEval, icfg: InterventionsConfig, rng_boot: np.random.Generator,
               rng_fold: np.random.Generator, rng_task_boot: np.random.Generator | None = None,
               rng_task_fold: np.random.Generator | None = None) -> tuple[list[dict], dict]:
    """effects.csv rows (unadjusted) and the verdict inputs of one evaluated group."""
    from interventions.arms import document_halves

    gid, plan, s = ge.plan.group.group_id, ge.plan, ge.sums
    W = bootstrap_weights(ge.n_docs, icfg.n_boot, rng_boot)
    fold = [document_halves(ge.n_docs, rng_fold) for _ in range(icfg.n_best_splits)]
    has_read = icfg.read_layer is not None
    lds = [f"logit_diff:{n}" for n in icfg.logit_diffs]
    effects = (["ce", "kl", "margin", "ce_per_norm", "margin_per_norm", "sqrt_kl_per_norm"]
               + (["read", "read_per_norm"] if has_read else [])
               + [e for n in icfg.logit_diffs for e in (f"logit_diff:{n}", f"logit_diff_per_norm:{n}")])
    additive = list(ADDITIVE_EFFECTS) + lds
    rows: list[dict] = []
    chosen: dict = {}
    add = _adder(rows, gid, W)
    for mode in icfg.modes:
        _comparisons(add, _ablation_arms(s, plan, mode), mode, effects, additive, plan.tested_members, ge.n_docs, fold, chosen)
    if icfg.steering.enabled:
        steer_eff = ["ce", "kl", "margin"] + (["read"] if has_read else []) + lds
        for a in icfg.steering.alphas:
            rand = pooled(s, [f"steer:random:{r}" for r in range(icfg.steering.n_random)], "steer", a)
            if rand is not None:
                add("steer:random", "clean", "steer", a, steer_eff, rand, None)
            for d in plan.steer_directions:
                arm = s[(f"steer:{d}", "steer", a)]
                add(f"steer:{d}", "clean", "steer", a, steer_eff, arm, None)
                if rand is not None:
                    add(f"steer:{d}", "steer:random", "steer", a, steer_eff, arm, rand)
    rows += task_rows(ge, icfg, rng_boot if rng_task_boot is None else rng_task_boot,
                      rng_fold if rng_task_fold is None else rng_task_fold)
    rows = finish_rows(rows, icfg.alpha)
    best = {f"{m}/{e}": v for (_, m, e), v in chosen.items()}
    for te in ge.tasks:
        best.update({f"{m}/{e}": v for (m, e), v in te.best_single_effects.items()})
    info = {"group_id": gid, "group_size": plan.group.size, "structure": plan.group.structure, "n_docs": ge.n_docs,
            "n_tokens_fires": ge.n_tokens_fires, "n_contexts": ge.n_contexts,
            "best_single_latents": chosen.get(("", icfg.modes[0], icfg.primary_effect), ""), "best_single": best}
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


def run_interventions(session: Session, groups: list[GroupSpec], icfg: InterventionsConfig, threshold_F: np.ndarray, *,
                      occ_F: np.ndarray | None = None, seed: int = 0, progress: bool = True, task_data: list | None = None,
                      checkpoints: str | Path | None = None, linked: set | None = None,
                      population: pd.DataFrame | None = None) -> InterventionsResult:
    """Evaluate ``groups`` on the session's model, SAE, hook and corpus (``sources.session.Session``; built by
    ``open_session`` or directly as ``Session(model, sae, hook, data, stream)``): the whole stage without a run folder.

    ``threshold_F`` is the per-latent firing threshold of the cooc stage; ``occ_F`` the firing counts used
    to match control groups on frequency (default: the counts of the pool scan); ``linked`` the latent pairs that
    co-occur (``CoocResult.linked_pairs()``), never both in one co-firing control draw. ``task_data``
    (:func:`interventions.tasks.load_task_data`) adds the task effects at ``read_layer``. ``population``: the sample
    design ``groups`` were drawn by (:func:`population_design`); the result then holds the population fractions.

    ``checkpoints``: a folder for per-group checkpoints (the caller keys it by everything the results depend
    on). The pool scan and every finished group (its effect rows before the run-wide BH adjustment, its
    verdict inputs, arms and :class:`GroupEval`) are saved there atomically; groups (and the pool) found there
    are loaded instead of recomputed. Each group draws from its own generators, seeded by ``(seed, group_id)``
    (:func:`_rngs`), so a loaded group changes no later group's draws, and the run-wide statistics come out
    exactly as in an uninterrupted run. The caller removes the folder once the outputs are written.
    """
    from interventions.forward import resolve_read_layer, token_ids
    from interventions.tasks import fit_task_readouts

    model, sae, hook, data, stream = session.model, session.sae, session.hook, session.data, session.stream

    read_layer = resolve_read_layer(model, hook, icfg.read_layer)
    logit_ids = {n: (token_ids(model.tokenizer, spec.targets, f"interventions.logit_diffs.{n}.targets"),
                     token_ids(model.tokenizer, spec.foils, f"interventions.logit_diffs.{n}.foils"))
                 for n, spec in icfg.logit_diffs.items()}
    icfg = icfg.model_copy(update={"read_layer": read_layer})
    tasks = list(task_data or []) if icfg.tasks.enabled else []
    if tasks and icfg.tasks.groups == "probe" and not any(g.probe_tasks for g in groups):
        log.warning("interventions: tasks.groups is probe but no evaluated group was chosen for a probe task "
                    "(probe_groups, with groups: auto or sample), so no task effects")
        tasks = []
    if tasks and read_layer is None:
        log.warning("interventions: no read_layer after the hook, so no task effects")
        tasks = []
    seed = icfg.seed if icfg.seed is not None else seed
    data = data.reading(icfg.evaluate_on)
    if not groups:
        empty = pd.DataFrame(columns=EFFECTS_COLUMNS)
        verdicts = verdicts_frame(empty, [], icfg.modes[0], icfg.primary_effect, icfg.alpha, icfg.min_docs)
        return InterventionsResult(empty, verdicts, pd.DataFrame(columns=ARMS_COLUMNS),
                                   effect_verdicts_frame(empty, icfg.alpha, icfg.min_docs), summarize(verdicts, [], [], icfg, None, data.part),
                                   additivity=additivity_frame(empty, [], icfg.alpha, icfg.min_docs))
    ckpt = Path(checkpoints) if checkpoints is not None else None
    saved = _load(ckpt, POOL_FILE, "the pool scan")
    if saved is not None:
        pool: Pool = saved["pool"]
        log.info("interventions: pool scan loaded from checkpoint")
    else:
        pool = scan_pool(model, sae, data, hook, stream, groups, threshold_F, icfg.pool_tokens, progress=progress,
                         keep_latents="pool_latents" in needs(icfg.modes))
        _save(ckpt, POOL_FILE, {"version": CHECKPOINT_VERSION, "pool": pool})
    occ = pool.count_F if occ_F is None else np.asarray(occ_F)
    if occ.shape[0] != pool.count_F.shape[0]:
        raise ConfigError("interventions", f"occurrences has {occ.shape[0]} latents but the SAE has {pool.count_F.shape[0]}; "
                                           "was the cooc stage run with another SAE?")
    W_eff = as_view(sae).decoder_FD().to(model.device)
    ev = Evaluator(model, sae, hook, pool, threshold_F, icfg)
    ev.logit_ids = logit_ids
    for td in tasks:
        fit_task_readouts(model, sae, hook, td, read_layer, threshold_F, icfg.tasks.folds, icfg.tasks.l2, icfg.batch_size, seed,
                          logit_tokens=icfg.tasks.logit_tokens if icfg.tasks.logit else None)
        for name, q in td.quality.items():
            log.info("task %s: clean cross-fitted readout at layer %d: %s", name, read_layer,
                     ", ".join(f"{k} {v:.3g}" for k, v in q.items() if k.startswith("clean")))
    rows, infos, arms, evals = [], [], [], []
    for k, g in enumerate(groups, 1):
        done = _load(ckpt, _group_file(g.group_id), f"group {g.group_id}")
        if done is not None and done.get("group_id") == g.group_id:
            log.info("interventions: group %s loaded from checkpoint", g.group_id)
        else:
            done = _evaluate(g, k, model, sae, hook, pool, W_eff, occ, ev, icfg, seed, tasks, read_layer, progress, linked)
            _save(ckpt, _group_file(g.group_id), done)
        rows += done["rows"]
        infos.append(done["info"])
        arms += done["arms"]
        if done["eval"] is not None:
            evals.append(done["eval"])
    effects = adjust_run(pd.DataFrame(rows, columns=[c for c in EFFECTS_COLUMNS if c not in ("p_adj", "family")]).assign(p_adj=np.nan),
                         icfg.modes[0], icfg.primary_effect, icfg.additivity_effect)
    verdicts = verdicts_frame(effects, infos, icfg.modes[0], icfg.primary_effect, icfg.alpha, icfg.min_docs,
                              icfg.additivity_effect)
    best = {(i["group_id"], *k.split("/", 1)): v for i in infos for k, v in i.get("best_single", {}).items()}
    effect_verdicts = effect_verdicts_frame(effects, icfg.alpha, icfg.min_docs, best)
    additivity = additivity_frame(effects, infos, icfg.alpha, icfg.min_docs)
    summary = summarize(verdicts, evals, tasks, icfg, read_layer, data.part)
    pop = None
    if population is not None:
        from interventions.population import design_summary, population_table

        pop = population_table(population, effects, icfg.modes[0], icfg.primary_effect, icfg.additivity_effect,
                               icfg.alpha, icfg.min_docs, task_questions=icfg.tasks.groups == "all")
        summary["population"] = design_summary(population, icfg.population.n_groups, icfg.population.size_bins, seed)
    return InterventionsResult(effects, verdicts, pd.DataFrame(arms, columns=ARMS_COLUMNS), effect_verdicts, summary,
                               evals, tasks, additivity=additivity, population=pop)


def summarize(verdicts: pd.DataFrame, evals: list[GroupEval], tasks: list, icfg: InterventionsConfig,
              read_layer: int | None, documents: str) -> dict:
    """summary.json: the primary comparison, the task data's sizes and each evaluated group's tokens, documents,
    arms and drawn controls."""
    return {
        "n_groups": int(len(verdicts)),
        "documents": documents,
        "primary": {"mode": icfg.modes[0], "effect": icfg.primary_effect, "scope": "fires"},
        "alpha": icfg.alpha,
        "n_boot": icfg.n_boot,
        "read_layer": read_layer,
        "tasks": {td.family: {"n_examples": int(len(td.examples)), "n_windows": len(td.windows),
                              "n_documents": int(td.examples["doc_index"].nunique()) if len(td.examples) else 0,
                              "readouts": td.quality}
                  for td in tasks},
        "groups": [{"group_id": e.plan.group.group_id, "probe_tasks": list(e.plan.group.probe_tasks), "n_docs": e.n_docs, "n_contexts": e.n_contexts,
                    "n_tokens_fires": e.n_tokens_fires, "n_arms": len(e.plan.arms),
                    "group_norm": e.plan.group_norm, "tested_members": list(e.plan.tested_members),
                    "random_groups": [list(r) for r in e.plan.random_groups], "control_frequency_bins": e.plan.control_bins,
                    "cofiring_latents": [list(r) for r in e.plan.cofiring_groups],
                    "halves": [[list(a), list(b)] for a, b in e.plan.halves], "n_control_draws": e.plan.n_draws,
                    "doc_ids": e.doc_ids, "context_ids": e.context_ids, "context_lengths": e.context_lengths,
                    "tasks": [{"family": t.family, "n_docs": t.n_docs, "n_windows": t.n_windows, "n_task_tokens": t.n_tokens,
                               "n_task_tokens_fires": t.n_tokens_fires, "doc_ids": t.doc_ids, "best_single": t.best_single,
                               "amnesic_refit": t.amnesic_quality}
                              for t in e.tasks]}
                   for e in evals],
    }


def _evaluate(g: GroupSpec, ordinal: int, model, sae, hook: HookSpec, pool: Pool, W_eff, occ: np.ndarray, ev: Evaluator,
              icfg: InterventionsConfig, seed: int, tasks: list, read_layer: int | None, progress: bool,
              linked=None) -> dict:
    """Everything group ``g`` contributes to the run (what a checkpoint holds): its effect rows before the run-wide
    BH adjustment, its verdict inputs, its arms and its :class:`GroupEval` (None when it never fires)."""
    from interventions.tasks import evaluate_task

    r_ctx, r_plan, r_boot, r_fold, r_task, r_tboot, r_tfold, r_arms = _rngs(seed, g.group_id, 8)
    contexts = choose_contexts(pool, g, icfg.max_tokens, icfg.tail_tokens, r_ctx, icfg.max_doc_tokens, icfg.span_tokens)
    if not contexts:
        log.warning("group %s never fires in the %d pool tokens; no verdict", g.group_id, pool.n_tokens)
        info = {"group_id": g.group_id, "group_size": g.size, "structure": g.structure, "n_docs": 0,
                "n_tokens_fires": 0, "n_contexts": 0, "best_single_latents": ""}
        return {"version": CHECKPOINT_VERSION, "group_id": g.group_id, "rows": [], "info": info, "arms": [], "eval": None}
    plan = plan_arms(g, pool, W_eff, occ, icfg, r_plan, arm_seed=int(r_arms.integers(2**32)), linked=linked)
    ge = evaluate_group(model, sae, hook, plan, contexts, ev, progress=progress, kill_name=f"group {ordinal} forward")
    for td in (tasks if icfg.tasks.groups == "all" or g.probe_tasks else []):
        te = evaluate_task(model, hook, plan, td, ev, read_layer, icfg.tasks.max_docs, r_task,
                           icfg.tasks.steering and icfg.steering.enabled, progress)
        if te is None:
            log.info("group %s fires on no %s task token; no task effects", g.group_id, td.family)
        else:
            ge.tasks.append(te)
    g_rows, info = group_rows(ge, icfg, r_boot, r_fold, r_tboot, r_tfold)
    log.info("group %s: %d arms on %d contexts (%d documents, %d tokens where it fires)", g.group_id, len(plan.arms),
             ge.n_contexts, ge.n_docs, ge.n_tokens_fires)
    return {"version": CHECKPOINT_VERSION, "group_id": g.group_id, "rows": g_rows, "info": info, "arms": arms_rows(ge),
            "eval": ge}


# ----------------------------------------------------------------------------------- checkpoints

CHECKPOINT_VERSION = 5  # 2: the pool may hold the latents of its tokens (resample), arms carry a seed; 3: co-firing counts,
# halves; 4: logit-level task effects; 5: task windows one per document (tasks.max_docs)
POOL_FILE = "pool.pkl"


def _group_file(group_id: str) -> str:
    """The checkpoint file of a group: ``group_<group_id>.pkl`` (a hash of the id when it is no plain file name)."""
    gid = str(group_id)
    if re.fullmatch(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,99}", gid):
        return f"group_{gid}.pkl"
    return f"group_{stable_hash(gid)}.pkl"


def _save(folder: Path | None, name: str, obj) -> None:
    if folder is None:
        return
    with atomic_path(folder / name) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def _load(folder: Path | None, name: str, what: str):
    """A checkpoint's object, or None when there is none or it cannot be read (then it is recomputed)."""
    if folder is None or not (folder / name).is_file():
        return None
    try:
        with open(folder / name, "rb") as f:
            obj = pickle.load(f)
    except Exception as exc:  # noqa: BLE001 - e.g. written by another version of the code: recompute
        log.warning("interventions: cannot read the checkpoint of %s (%s); recomputing it", what, exc)
        return None
    if not isinstance(obj, dict) or obj.get("version") != CHECKPOINT_VERSION:
        log.warning("interventions: the checkpoint of %s has another format; recomputing it", what)
        return None
    return obj
