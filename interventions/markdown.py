"""The interventions section of ``OUT/report.md``: :func:`render_report` takes the stage's result and
says in a minute's reading what the verdicts are (definitions in docs/interventions.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd


EFFECT_WORDS = {
    "sqrt_kl_per_norm": "change of the next-token distribution per unit of residual norm removed "
                        "(sqrt(2 KL) / RMS edit norm, which does not favour larger edits)",
    "ce_per_norm": "next-token cross-entropy increase per unit of residual norm removed",
    "kl": "KL divergence from the clean next-token distribution",
    "ce": "next-token cross-entropy increase",
    "margin": "drop of the clean model's decision margin (logit of its top-1 minus its top-2 next token)",
    "margin_per_norm": "decision-margin drop per unit of residual norm removed",
}


def effect_words(effect: str) -> str:
    """A phrase for an effect name, including the task effects ``probe:<target>`` / ``probe_per_norm:<target>``."""
    kind, _, target = str(effect).partition(":")
    if kind == "probe":
        return f"increase of the {target} readout loss at the read layer"
    if kind == "probe_per_norm":
        return f"increase of the {target} readout loss per unit of residual norm removed"
    return EFFECT_WORDS.get(effect, effect)


def _finite(x) -> float | None:
    """``x`` as a float, or None when it is missing, not a number, NaN or infinite."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _g(x, digits: int = 3) -> str:
    x = _finite(x)
    return "n/a" if x is None else f"{x:.{digits}g}"


def _p(x) -> str:
    x = _finite(x)
    if x is None:
        return "n/a"
    return "<0.001" if x < 1e-3 else f"{x:.3f}"


def _count(v: pd.DataFrame, col: str, value: str) -> int:
    return int((v[col].astype(str) == value).sum()) if col in v else 0


NOT_RUN = ("## Interventions\n\nNot run: the interventions stage is disabled or has not finished in this folder "
           "(no `interventions/summary.json`).\n")
"""The section when there is no interventions result."""


def render_report(result) -> str:
    """Markdown summarising an :class:`interventions.result.InterventionsResult` (e.g. one loaded from a run
    folder) for a researcher."""
    v, eff, summary = result.verdicts, result.effects, result.summary
    lines = ["## Interventions: are co-occurrence groups better units than single latents?", ""]
    if v.empty:
        lines += ["No group was evaluated (the cooc stage found no group of the requested size, or none fired in "
                  "the scanned tokens).", ""]
        return "\n".join(lines)
    mode, effect = str(v["mode"].iloc[0]), str(v["effect"].iloc[0])
    alpha = summary.get("alpha", 0.05)
    extra = outside_sample(summary)
    n_cmp = int((eff["comparator"] != "clean").sum()) if not eff.empty else 0
    n = len(v)
    better = int(v["verdict"].astype(str).str.startswith("better unit").sum())
    insufficient = int(v["verdict"].astype(str).str.startswith("insufficient").sum())
    lines += [
        f"{n} group(s) evaluated{_outside_words(extra)}. Verdicts use the **{mode}** ablation and the {EFFECT_WORDS.get(effect, effect)} "
        f"(`{effect}`), at the tokens where the group fires. \"Beats\" means the group's effect is larger, "
        f"with a Benjamini-Hochberg adjusted p < {alpha} (within the pre-specified primary family: per group, vs its "
        f"best single latent and each control at its tokens; {n_cmp} comparisons in the run in all) and a "
        f"{100 * (1 - alpha):.0f}% document-bootstrap interval of the difference above 0 (control draws resampled "
        f"inside the bootstrap).",
        "",
        f"- **{better} of {n}** are better units: they beat their best single latent *and* every control at their tokens.",
        f"- {_count(v, 'beats_best_single', 'beats')} beat their best single latent "
        f"(every member tried, chosen per mode and effect on one half of the documents, scored on the other); "
        f"{_count(v, 'beats_best_single', 'loses')} are worse than it.",
        f"- At the group's tokens: {_count(v, 'beats_cofiring_latents', 'beats')} beat co-firing latents (non-members "
        f"firing there, matched on frequency); {_count(v, 'beats_random_spans', 'beats')} beat random spans of their "
        f"dimension removing the same norm; {_count(v, 'beats_random_directions', 'beats')} beat random directions "
        f"removing the same norm. At their own tokens (descriptive): {_count(v, 'beats_random_groups', 'beats')} beat "
        f"random latent groups matched on size and frequency.",
        f"- Non-additivity ({v['additivity_effect'].iloc[0] if 'additivity_effect' in v else 'margin'}, the group vs the "
        f"sum of its members' effects on the same tokens, its own BH family): "
        + ", ".join(f"{_count(v, 'additivity', lab)} {lab}" for lab in ("superadditive", "subadditive", "additive"))
        + " (additive: no departure detected).",
    ]
    if insufficient:
        lines.append(f"- {insufficient} had too few evaluation documents for a verdict.")
    lines += _population_section(getattr(result, "population", None), summary.get("population"), alpha, extra)
    lines += ["", "| group | size | structure | docs | verdict | group / best single | group - best single [CI] | "
              "vs co-firing latents | vs random spans | vs random directions | vs random groups (own tokens) | "
              "group / sum of members | collateral KL |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in v.itertuples():
        lines.append(
            f"| {r.group_id}{' (chosen, not drawn)' if str(r.group_id) in extra else ''} | {r.group_size} | {r.structure if isinstance(r.structure, str) else ''} | {r.n_docs} | {r.verdict} | "
            f"{_g(r.ratio_vs_best_single)}x | {_g(r.diff_vs_best_single)} [{_g(r.ci_low_vs_best_single)}, "
            f"{_g(r.ci_high_vs_best_single)}], p_adj {_p(r.p_adj_vs_best_single)} | "
            + " | ".join(f"{getattr(r, 'beats_' + c)} (p_adj {_p(getattr(r, 'p_adj_vs_' + c))})"
                         for c in ("cofiring_latents", "random_spans", "random_directions", "random_groups"))
            + f" | {_g(r.additivity_ratio)}x: {r.additivity} (p_adj {_p(r.p_adj_vs_sum_of_members)}) | {_g(r.collateral_kl)} |")
    lines.append("")
    for r in v.itertuples():
        if not math.isfinite(float(r.group_estimate)):
            continue
        best = str(r.best_single_latents) if isinstance(r.best_single_latents, str) else "?"
        words = (f"- **{r.group_id}** ({r.group_size} latents): {effect} = {_g(r.group_estimate)} where it fires, "
                 f"vs {_g(r.best_single_estimate)} for its best single latent ({best.replace('|', ' or ')}). ")
        other = str(r.beats_best_single_on) if isinstance(r.beats_best_single_on, str) and r.beats_best_single_on else ""
        words += f"It beats that latent on: {other.replace(';', ', ')}." if other else "It beats that latent on no mode/effect."
        steer = str(r.steer_beats_random_alphas) if isinstance(r.steer_beats_random_alphas, str) else ""
        if steer:
            words += f" Steering along its direction moves the output more than random directions of equal norm at {steer.replace(';', ', ')}."
        lines.append(words)
    lines += _additivity_section(getattr(result, "additivity", None))
    lines += _task_section(result.effect_verdicts, summary, v, alpha)
    lines += ["", "Per-arm effects, all modes, scopes (`fires` / `other` tokens = collateral damage) and the steering "
              "dose-response over the alpha grid are in `interventions/effects.csv`; what each arm edited (including the "
              "random control latents) in `interventions/arms.csv`. Definitions: docs/interventions.md.", ""]
    return "\n".join(lines)


def _outside_words(extra: dict[str, str]) -> str:
    if not extra:
        return ""
    return (f" ({len(extra)} of them outside the population sample, chosen for a probe task: the run-wide counts and BH "
            "families below include them, the population fractions do not)")


def outside_sample(summary: dict) -> dict[str, str]:
    """The evaluated groups a sample did not draw (probe groups added to it): group_id -> its probe tasks, in order."""
    design = summary.get("population") or {}
    if not design:
        return {}
    drawn = {i for s in design.get("strata", []) for i in s.get("ids", [])}
    return {g["group_id"]: ", ".join(g.get("probe_tasks") or []) or "listed"
            for g in summary.get("groups", []) if g["group_id"] not in drawn}


def named_with_tasks(extra: dict[str, str]) -> str:
    """``g1 (task, task), g2 (task)``: the groups of :func:`outside_sample` with their probe tasks."""
    return ", ".join(f"{g} ({t})" for g, t in extra.items())


def _population_section(pop: pd.DataFrame | None, design: dict | None, alpha: float,
                        extra: dict[str, str] | None = None) -> list[str]:
    """The population fractions (population.csv) over every sampled group: the answer to 'what fraction of groups'."""
    if pop is None or pop.empty or not design:
        return []
    strata = "; ".join(f"{s['stratum']} {s['sampled']}/{s['groups']}" for s in design.get("strata", []))
    lines = ["", "### The population of groups", "",
             f"A pre-registered sample of **{design['n_sampled']} of {design['n_population']} groups**, stratified by "
             f"structure label and size (drawn/in stratum: {strata}). A group answers yes when its own test at level "
             f"{alpha} (unadjusted, the interval on that side of 0) finds the difference; with no such group, about the "
             "null rate of groups would answer yes by chance. The fraction weights each stratum by its share of all "
             f"groups ({100 * (1 - alpha):.0f}% Korn-Graubard interval); it is among testable groups, and the untested "
             "share says how much of the population that leaves out.", "",
             "| question | effect | yes / tested | fraction [CI] | null rate | untested share |", "|---|---|---|---|---|---|"]
    for r in pop[pop["groups"] == "all"].itertuples():
        lines.append(f"| {r.question} | `{r.effect}` | {r.k} / {r.n_tested} | {_g(r.fraction)} [{_g(r.ci_low)}, "
                     f"{_g(r.ci_high)}] | {_g(r.null_rate)} | {_g(r.untested_share)} |")
    lines += ["", "Per structure label: `interventions/population.csv`."]
    if extra:
        lines.append(f"Also evaluated, outside the sample and its fractions (chosen for a probe task, not drawn): "
                     f"{named_with_tasks(extra)}.")
    return lines


def _additivity_section(add: pd.DataFrame | None) -> list[str]:
    """The non-additivity table (additivity.csv): the group vs the sum of its members' effects on the same tokens."""
    if add is None or add.empty:
        return []
    lines = ["", "### Non-additivity: does the group act as a unit?", "",
             "The group's effect against the sum of its members' individual effects on the same tokens (and against the "
             "sum of two complementary halves' effects, mean over random splits). Additive: no departure detected.", "",
             "| group | mode | effect | group | sum of members | group / sum | group - sum [CI], p_adj | "
             "group - halves [CI], p_adj | label |", "|---|---|---|---|---|---|---|---|---|"]
    for r in add.itertuples():
        lines.append(f"| {r.group_id} | {r.mode} | {r.effect} | {_g(r.group_estimate)} | {_g(r.sum_of_members_estimate)} | "
                     f"{_g(r.ratio_vs_sum)}x | {_g(r.diff_vs_sum_of_members)} [{_g(r.ci_low_vs_sum_of_members)}, "
                     f"{_g(r.ci_high_vs_sum_of_members)}], {_p(r.p_adj_vs_sum_of_members)} | {_g(r.diff_vs_halves)} "
                     f"[{_g(r.ci_low_vs_halves)}, {_g(r.ci_high_vs_halves)}], {_p(r.p_adj_vs_halves)} | {r.additivity}"
                     f"{' (pre-specified)' if r.family == 'additivity' else ''} |")
    return lines


def _task_section(ev: pd.DataFrame | None, summary: dict, v: pd.DataFrame, alpha: float) -> list[str]:
    """Task effects (probe readouts at the read layer) and the decision-margin effect, from effect_verdicts.csv."""
    if ev is None or ev.empty:
        return []
    mode = str(v["mode"].iloc[0])
    lines = []
    tasks = summary.get("tasks") or {}
    layer = summary.get("read_layer")
    task = ev[(ev["mode"] == mode) & ev["effect"].astype(str).str.match(r"probe(_amnesic|_logit)?:")]
    if tasks:
        quality = []
        for fam, info in tasks.items():
            for name, q in (info.get("readouts") or {}).items():
                what = (f"R^2 {_g(q.get('clean_r2'))}" if "clean_r2" in q else f"accuracy {_g(q.get('clean_accuracy'))}, "
                        f"log loss {_g(q.get('clean_loss'))}")
                if "clean_logit_corr" in q:
                    what += f"; logit-level contrast r {_g(q.get('clean_logit_corr'))}"
                quality.append(f"{name} ({what}, {q.get('n')} tokens, {q.get('n_docs')} documents)")
        lines += ["", f"### Task effects at layer {layer}", "",
                  "A linear readout of each probe task, fitted on the clean residual stream at the read layer and "
                  "cross-fitted by document, reads the task tokens after each intervention; the effect is the increase "
                  "of its loss per task token, paired with the clean run (regression: squared error / Var(y), i.e. the "
                  "R^2 drop; classification: -log p(correct sense)); the *amnesic* rows refit the readout on the edited "
                  "residuals (cross-fitted by document) and subtract the same refit on the clean ones, so they say "
                  "whether the information is gone rather than moved. The *logit* rows are logit-level: at each task "
                  "token, the drop of the logit difference between the continuations that go with a high and a low "
                  "target (one sense and the other), chosen on the other folds' documents, signed by the token's own "
                  "target (positive: the model's prediction moves away from the continuations of its own target). "
                  "Clean cross-fitted readouts: "
                  + ("; ".join(quality) if quality else "none") + "."]
        if task.empty:
            lines += ["", "None of the evaluated groups fires on a task token, so there are no task effects."]
        else:
            lines += ["", f"{mode} ablation, at the task tokens where the group fires:", "",
                      "| group | task | docs | tokens | group | best single | group - best single [CI], p_adj | "
                      "vs co-firing latents | vs random spans | vs random directions |", "|---|---|---|---|---|---|---|---|---|---|"]
            for r in task.itertuples():
                kind = str(r.effect).split(':', 1)[0].removeprefix("probe").removeprefix("_")
                what = str(r.effect).split(':', 1)[1] + (f" ({kind})" if kind else "")
                lines.append(f"| {r.group_id} | {what} | {r.n_docs} | {r.n_tokens} | "
                             f"{_g(r.group_estimate)} | {_g(r.best_single_estimate)} | {r.beats_best_single}: "
                             f"{_g(r.diff_vs_best_single)} [{_g(r.ci_low_vs_best_single)}, {_g(r.ci_high_vs_best_single)}], "
                             f"p_adj {_p(r.p_adj_vs_best_single)} | "
                             + " | ".join(f"{getattr(r, 'beats_' + c)} (p_adj {_p(getattr(r, 'p_adj_vs_' + c))})"
                                          for c in ("cofiring_latents", "random_spans", "random_directions")) + " |")
            n_task_groups = task["group_id"].nunique()
            better = task[task["better_unit"].astype(str) == "True"]
            lines += ["", f"{n_task_groups} of {len(v)} group(s) fire on task tokens; {len(better)} of {len(task)} "
                          f"(group, task) pairs show a better unit on the task readout (beats its best single latent "
                          f"and every control at its tokens at BH-adjusted p < {alpha})."]
    margin = ev[(ev["mode"] == mode) & (ev["effect"] == "margin")]
    if not margin.empty:
        parts = [f"{r.group_id} {_g(r.group_estimate)} vs {_g(r.best_single_estimate)} ({r.beats_best_single})"
                 for r in margin.itertuples()]
        lines += ["", f"Decision-margin drop (clean top-1 minus top-2 logit, {mode}), group vs best single latent: "
                      + "; ".join(parts) + "."]
    return lines


def plot_dose_response(effects: pd.DataFrame, path: str | Path) -> Path | None:
    """Steering dose-response figure: mean KL, CE change and each task readout's loss increase (``probe:<target>``)
    at the group's tokens vs alpha, per group, for each group direction and for random directions of the same
    norm (95% bootstrap intervals)."""
    steer = effects[(effects["comparator"] == "clean") & (effects["mode"] == "steer") & (effects["scope"] == "fires")]
    if steer.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(steer["group_id"]))
    panels = ["kl", "ce"] + sorted(e for e in steer["effect"].astype(str).unique() if e.startswith("probe:"))
    fig, axes = plt.subplots(len(panels), len(groups), figsize=(3.6 * len(groups), 2.7 * len(panels)), squeeze=False,
                             sharex=True)
    for j, gid in enumerate(groups):
        for i, eff in enumerate(panels):
            ax = axes[i][j]
            g = steer[(steer["group_id"] == gid) & (steer["effect"] == eff)]
            for arm, sub in g.groupby("arm", sort=True):
                sub = sub.sort_values("alpha")
                ax.errorbar(sub["alpha"], sub["estimate"],
                            yerr=[(sub["estimate"] - sub["ci_low"]).clip(lower=0), (sub["ci_high"] - sub["estimate"]).clip(lower=0)],
                            marker="o", ms=3, capsize=2, label=arm.split(":", 1)[1],
                            ls="--" if arm == "steer:random" else "-")
            ax.axhline(0, color="0.7", lw=0.8)
            ax.set_title(gid if i == 0 else "", fontsize=9)
            label = {"kl": "KL (nats)", "ce": "CE change (nats)"}.get(eff, f"{eff.split(':', 1)[-1]}\nreadout loss increase")
            ax.set_ylabel(label, fontsize=8)
            if i == len(panels) - 1:
                ax.set_xlabel("alpha", fontsize=8)
            ax.tick_params(labelsize=7)
        if axes[0][j].get_legend_handles_labels()[0]:
            axes[0][j].legend(fontsize=7)
    fig.suptitle("Steering dose-response at the group's tokens (random: same norm)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
