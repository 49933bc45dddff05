"""Summarise a run's interventions: the verdict table, the non-additivity table and the task-effect rows the README and
docs quote.

    .venv/bin/python benchmarks/interventions_default_summary.py [runs/default]   # after python -m experiments.steer
"""

import json
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
v = pd.read_csv(out / "verdicts.csv", dtype={"group_id": str})
ev = pd.read_csv(out / "interventions" / "effect_verdicts.csv", dtype={"group_id": str})
add = pd.read_csv(out / "interventions" / "additivity.csv", dtype={"group_id": str})
summary = json.loads((out / "interventions" / "summary.json").read_text())
CONTROLS = ("cofiring_latents", "random_spans", "random_directions", "random_groups")


def p(x) -> str:
    return "n/a" if pd.isna(x) else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


def vs(r, c) -> str:
    return f"{getattr(r, 'beats_' + c)} ({p(getattr(r, 'p_adj_vs_' + c))})"


print("| group | size | structure | docs | arms | group ÷ best single | group − best single [95 % CI] | p_adj | "
      "vs co-firing latents | vs random spans | vs random directions | vs random groups (own tokens) | "
      "better unit on (any effect) |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
arms = {g["group_id"]: g["n_arms"] for g in summary.get("groups", [])}
for r in v.itertuples():
    print(f"| {r.group_id} | {r.group_size} | {r.structure} | {r.n_docs} | {arms.get(r.group_id, '')} | "
          f"{r.ratio_vs_best_single:.2f}× | {r.diff_vs_best_single:+.4f} [{r.ci_low_vs_best_single:+.4f}, "
          f"{r.ci_high_vs_best_single:+.4f}] | {p(r.p_adj_vs_best_single)} | "
          + " | ".join(vs(r, c) for c in CONTROLS)
          + f" | {r.better_unit_on if isinstance(r.better_unit_on, str) and r.better_unit_on else '—'} |")
effects = pd.read_csv(out / "interventions" / "effects.csv", dtype={"group_id": str})
cmp = effects[effects["comparator"] != "clean"]
fam = cmp["family"] if "family" in cmp else pd.Series("secondary", index=cmp.index)
sizes = ", ".join(f"{f} {int((fam == f).sum())}" for f in ("primary", "additivity", "secondary") if (fam == f).any())
print(f"\ncomparisons (rows of effects.csv against a comparator): {len(cmp)} ({sizes}; BH within each family), of which "
      f"{int(cmp['p_value'].isna().sum())} have no p-value; better-unit effect verdicts: {int(ev['better_unit'].sum())}")

print("\nNon-additivity (group vs the sum of its members' effects on the same tokens; halves: mean over random splits "
      "of the sum of two complementary halves):")
print("| group | size | mode | effect | group | sum of members | best single | group ÷ sum | group − sum [95 % CI], "
      "p_adj | group − halves [95 % CI], p_adj | label |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in add.itertuples():
    print(f"| {r.group_id} | {r.group_size} | {r.mode} | {r.effect} | {r.group_estimate:.3g} | {r.sum_of_members_estimate:.3g} | "
          f"{r.best_single_estimate:.3g} | {r.ratio_vs_sum:.2f}× | {r.diff_vs_sum_of_members:+.3g} "
          f"[{r.ci_low_vs_sum_of_members:+.3g}, {r.ci_high_vs_sum_of_members:+.3g}], {p(r.p_adj_vs_sum_of_members)} | "
          f"{r.diff_vs_halves:+.3g} [{r.ci_low_vs_halves:+.3g}, {r.ci_high_vs_halves:+.3g}], {p(r.p_adj_vs_halves)} | "
          f"{r.additivity}{' (pre-specified)' if r.family == 'additivity' else ''} |")

print("\nTask effects (zero ablation; readout loss increase: R² drop, or drop of log p(correct sense)):")
print("| group | task | docs | tokens | group | best single | group − best single [CI], p_adj | vs co-firing latents | "
      "vs random spans | vs random directions |")
print("|---|---|---|---|---|---|---|---|---|---|")
task = ev[(ev["mode"] == "zero") & ev["effect"].str.startswith("probe:")]
for r in task.itertuples():
    print(f"| {r.group_id} | {r.effect.split(':', 1)[1]} | {r.n_docs} | {r.n_tokens} | {r.group_estimate:.3g} | "
          f"{r.best_single_estimate:.3g} | {r.beats_best_single}: {r.diff_vs_best_single:+.3g} "
          f"[{r.ci_low_vs_best_single:+.3g}, {r.ci_high_vs_best_single:+.3g}], p_adj {p(r.p_adj_vs_best_single)} | "
          + " | ".join(vs(r, c) for c in CONTROLS[:3]) + " |")
print("\nLogit-level task effects (zero ablation; drop of the logit difference between the continuations that go with "
      "the token's own target and the others, signed by the target):")
for fam, info in summary.get("tasks", {}).items():
    for name, q in (info.get("readouts") or {}).items():
        if "clean_logit_corr" in q:
            first = (q.get("logit_continuations") or [{}])[0]
            print(f"  {name}: clean out-of-fold r {q['clean_logit_corr']:.3f}; fold 0 up {first.get('up')}, down {first.get('down')}")
print("| group | task | docs | tokens | group | best single | group − best single [CI], p_adj | vs co-firing latents | "
      "vs random spans | vs random directions |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in ev[(ev["mode"] == "zero") & ev["effect"].str.startswith("probe_logit:")].itertuples():
    print(f"| {r.group_id} | {r.effect.split(':', 1)[1]} | {r.n_docs} | {r.n_tokens} | {r.group_estimate:.3g} | "
          f"{r.best_single_estimate:.3g} | {r.beats_best_single}: {r.diff_vs_best_single:+.3g} "
          f"[{r.ci_low_vs_best_single:+.3g}, {r.ci_high_vs_best_single:+.3g}], p_adj {p(r.p_adj_vs_best_single)} | "
          + " | ".join(vs(r, c) for c in CONTROLS[:3]) + " |")
print("\nBetter-unit effect verdicts (group beats its best single latent and every control at its tokens):")
for r in ev[ev["better_unit"].astype(bool)].itertuples():
    print(f"  {r.group_id} {r.mode}/{r.effect}: {r.diff_vs_best_single:+.3g} [{r.ci_low_vs_best_single:+.3g}, "
          f"{r.ci_high_vs_best_single:+.3g}], p_adj {p(r.p_adj_vs_best_single)}; "
          + ", ".join(f"vs {c} {p(getattr(r, 'p_adj_vs_' + c))}" for c in CONTROLS[:3]))

print("\nTask windows per group (documents, one window each; task tokens; of which the group fires on):")
for g in summary.get("groups", []):
    print(f"  {g['group_id']}: " + "; ".join(f"{t['family']} {t['n_docs']} docs, {t['n_task_tokens']} tokens, "
                                             f"{t['n_task_tokens_fires']} firing" for t in g.get("tasks", [])))
print(f"\ninterventions stage wall time: {json.loads((out / 'manifest.json').read_text())['stages']['interventions']['wall_s']:.0f} s")

pop_file = out / "interventions" / "population.csv"
if pop_file.exists():
    pop = pd.read_csv(pop_file)
    design = summary.get("population", {})
    print(f"\nPopulation: a sample of {design.get('n_sampled')} of {design.get('n_population')} groups; strata "
          + "; ".join(f"{s['stratum']} {s['sampled']}/{s['groups']}" for s in design.get("strata", [])))
    print("| groups | question | effect | yes / tested | fraction [95 % CI] | sample fraction | null rate | untested share |")
    print("|---|---|---|---|---|---|---|---|")
    for r in pop.itertuples():
        print(f"| {r.groups} | {r.question} | `{r.effect}` | {r.k} / {r.n_tested} | {r.fraction:.2f} [{r.ci_low:.2f}, "
              f"{r.ci_high:.2f}] | {r.sample_fraction:.2f} | {r.null_rate:.3f} | {r.untested_share:.2f} |")
