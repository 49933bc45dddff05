"""Summarise a run's interventions: the verdict table and the task-effect rows the README and docs quote.

    .venv/bin/python benchmarks/interventions_default_summary.py [runs/default]   # after python -m experiments.steer
"""

import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
v = pd.read_csv(out / "verdicts.csv", dtype={"group_id": str})
ev = pd.read_csv(out / "interventions" / "effect_verdicts.csv", dtype={"group_id": str})


def p(x) -> str:
    return "n/a" if pd.isna(x) else (f"{x:.2g}" if x < 0.001 else f"{x:.3f}")


print("| group | size | structure | docs | group ÷ best single | group − best single [95 % CI] | p_adj | vs random groups "
      "| vs random directions | better unit on (any effect) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r in v.itertuples():
    print(f"| {r.group_id} | {r.group_size} | {r.structure} | {r.n_docs} | {r.ratio_vs_best_single:.2f}× | "
          f"{r.diff_vs_best_single:+.4f} [{r.ci_low_vs_best_single:+.4f}, {r.ci_high_vs_best_single:+.4f}] | "
          f"{p(r.p_adj_vs_best_single)} | {r.beats_random_groups} (p_adj {p(r.p_adj_vs_random_groups)}) | "
          f"{r.beats_random_directions} (p_adj {p(r.p_adj_vs_random_directions)}) | "
          f"{r.better_unit_on if isinstance(r.better_unit_on, str) and r.better_unit_on else '—'} |")
effects = pd.read_csv(out / "interventions" / "effects.csv", dtype={"group_id": str})
cmp = effects[effects["comparator"] != "clean"]
fam = cmp["family"] if "family" in cmp else pd.Series("secondary", index=cmp.index)
sizes = ", ".join(f"{f} {int((fam == f).sum())}" for f in ("primary", "secondary") if (fam == f).any())
print(f"\ncomparisons (rows of effects.csv against a comparator): {len(cmp)} ({sizes}; BH within each family), of which "
      f"{int(cmp['p_value'].isna().sum())} have no p-value; better-unit effect verdicts: {int(ev['better_unit'].sum())}")
print("\nTask effects (zero ablation; readout loss increase: R² drop, or drop of log p(correct sense)):")
print("| group | task | docs | tokens | group | best single | group − best single [CI], p_adj | vs random groups | "
      "vs random directions |")
print("|---|---|---|---|---|---|---|---|---|")
task = ev[(ev["mode"] == "zero") & ev["effect"].str.startswith("probe:")]
for r in task.itertuples():
    print(f"| {r.group_id} | {r.effect.split(':', 1)[1]} | {r.n_docs} | {r.n_tokens} | {r.group_estimate:.3g} | "
          f"{r.best_single_estimate:.3g} | {r.beats_best_single}: {r.diff_vs_best_single:+.3g} "
          f"[{r.ci_low_vs_best_single:+.3g}, {r.ci_high_vs_best_single:+.3g}], p_adj {p(r.p_adj_vs_best_single)} | "
          f"{r.beats_random_groups} (p_adj {p(r.p_adj_vs_random_groups)}) | "
          f"{r.beats_random_directions} (p_adj {p(r.p_adj_vs_random_directions)}) |")
print("\nBetter-unit effect verdicts (group beats its best single latent and both matched controls):")
for r in ev[ev["better_unit"].astype(bool)].itertuples():
    print(f"  {r.group_id} {r.mode}/{r.effect}: {r.diff_vs_best_single:+.3g} [{r.ci_low_vs_best_single:+.3g}, "
          f"{r.ci_high_vs_best_single:+.3g}], p_adj {p(r.p_adj_vs_best_single)}; vs random groups "
          f"{p(r.p_adj_vs_random_groups)}, vs random directions {p(r.p_adj_vs_random_directions)}")
