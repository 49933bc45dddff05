"""Summarise OUT/probes: the grouping-helps verdicts, the primary comparisons, the per-target ceilings, baselines and
topic controls, and the skipped targets (the tables of docs/probes.md's "On the default run").

    .venv/bin/python benchmarks/probe_default_summary.py [runs/default]
"""

import json
import sys
from pathlib import Path

from probes.result import ProbesResult

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
res = ProbesResult.load(out / "probes")
r = res.results
arms = r[r.row_type == "arm"]
main = {"r2": "r2", "log_loss": "auroc"}


def arm(task, name, metric, gid=None):
    a = arms[(arms.task == task) & (arms.arm == name) & (arms.metric == metric)]
    if gid is not None:
        a = a[a.group_id == gid]
    return f"{a.estimate.iloc[0]:.3f}" if len(a) else ""


print("## targets: ceiling, baselines, topic control (R² for regression, AUROC for classification)\n")
print("| target | n | documents | residual | neighbour residual | baseline: position | url_index | token | union |")
print("|---|---|---|---|---|---|---|---|---|")
for task, sub in arms[arms.arm == "residual"].groupby("task", sort=False):
    m = "r2" if (sub.metric == "r2").any() else "auroc"
    row = sub[sub.metric == m].iloc[0]
    print(f"| {task} | {int(row.n)} | {int(row.n_docs)} | {arm(task, 'residual', m)} | {arm(task, 'neighbour_residual', m)} | "
          f"{arm(task, 'baseline:position', m)} | {arm(task, 'baseline:url_index', m)} | {arm(task, 'baseline:token', m)} | "
          f"{arm(task, 'baseline:union', m)} |")

print("\n## verdicts (grouping helps = wins against every enrichment- and budget-matched comparator)\n")
v = res.verdicts()
print("| target | group (size) | unit | grouping helps | did not beat | beats URL baselines | smallest difference | p (IUT) | p_adj |")
print("|---|---|---|---|---|---|---|---|---|")
for x in v.itertuples():
    base = "" if str(x.beats_baselines) in ("<NA>", "nan") else ("yes" if x.beats_baselines else "no")
    print(f"| {x.task} | {x.group_id} ({x.group_size}) | {x.unit} | {'yes' if x.grouping_helps else 'no'} | {x.lost_to or '—'} | "
          f"{base} | {x.estimate_min:+.3f} | {x.p_iut:.2g} | {x.p_adj:.2g} |")

print("\n## tested comparisons (tested metric), by family\n")
tested = r[(r.row_type == "comparison") & r.p_adj.notna()]
print("| target | group | family | comparison | group arm | difference [95% CI] | p_adj | rank p | win |")
print("|---|---|---|---|---|---|---|---|---|")
for x in tested.itertuples():
    a = x.arm.split("-vs-")[0]
    print(f"| {x.task} | {x.group_id if isinstance(x.group_id, str) else ''} | {x.family} | {x.arm} | "
          f"{arm(x.task, a, x.metric, x.group_id if isinstance(x.group_id, str) else None)} | "
          f"{x.estimate:+.3f} [{x.ci_low:+.3f}, {x.ci_high:+.3f}] | {x.p_adj:.2g} | "
          f"{'' if x.rank_p != x.rank_p else f'{x.rank_p:.2g}'} | {'yes' if x.win else 'no'} |")
print()
for fam, sub in tested.groupby("family"):
    print(f"family {fam}: {int(sub.win.fillna(False).astype(bool).sum())} wins of {len(sub)}")
print(f"grouping helps: {int(v.grouping_helps.sum())} of {len(v)} verdicts")
for _, row in r[r.arm == "skipped"].iterrows():
    print(f"skipped {row.task}: {row.note}")
summary = json.loads((out / "probes" / "summary.json").read_text())
ws = summary.get("tasks", {}).get("word_sense", {})
if ws.get("label_counts"):
    print("\nword-sense labels found in the scanned documents (word, label, count):")
    for c in ws["label_counts"]:
        print(f"  {c['word']} {c['label']} {c['count']}")
