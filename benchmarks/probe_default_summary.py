"""Summarise OUT/probes/results.csv: group versus best single latent/direction and matched controls.

    .venv/bin/python benchmarks/probe_default_summary.py [runs/default]
"""

import sys
from pathlib import Path

from probes.result import ProbesResult

out = sys.argv[1] if len(sys.argv) > 1 else "runs/default"
r = ProbesResult.load(Path(out) / "probes").results
tested = r[(r.row_type == "comparison") & r.p_adj.notna()]
comparisons = ["group_subspace-vs-best_single_direction", "group_latents-vs-best_single_latent",
               "group_subspace-vs-matched_subspace", "group_subspace-vs-random_subspace"]
print("| task | group (size) | metric | group subspace | comparison | difference [95% CI] | p_adj | win |")
print("|---|---|---|---|---|---|---|---|")
for (task, gid), rows in tested.groupby(["task", "group_id"], sort=False):
    arms = r[(r.task == task) & (r.group_id == gid) & (r.row_type != "comparison")]
    for comp in comparisons:
        row = rows[rows.arm == comp]
        if row.empty:
            continue
        row = row.iloc[0]
        gs = arms[(arms.arm == "group_subspace") & (arms.metric == row.metric)]
        gs_txt = f"{gs.estimate.iloc[0]:.3f} [{gs.ci_low.iloc[0]:.3f}, {gs.ci_high.iloc[0]:.3f}]" if len(gs) else ""
        print(f"| {task} | {gid} ({int(row.group_size)}) | {row.metric} | {gs_txt} | {comp.split('-vs-')[0]} vs {comp.split('-vs-')[1]} | "
              f"{row.estimate:+.3f} [{row.ci_low:+.3f}, {row.ci_high:+.3f}] | {row.p_adj:.2g} | {'yes' if row.win else 'no'} |")
skipped = r[r.arm == "skipped"]
for _, row in skipped.iterrows():
    print(f"skipped {row.task}: {row.note}")
