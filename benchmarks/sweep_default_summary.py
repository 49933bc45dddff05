"""Print the README's tables of the default sweep from its folder (default: runs/sweep_widths).

    .venv/bin/python benchmarks/sweep_default_summary.py [SWEEP_OUT]

Reads only the sweep's own files (points.csv, fate_counts.csv, sweep.json), so it runs in seconds after ``python -m experiments.sweep experiments/configs/sweep_widths.yaml``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from reports.sweep import REFERENCE


def pct(x) -> str:
    return "" if pd.isna(x) else f"{100 * float(x):.1f} %"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="runs/sweep_widths", help="the sweep's output folder")
    out = Path(ap.parse_args().out)
    pts = pd.read_csv(out / "points.csv")
    rec = json.loads((out / "sweep.json").read_text())
    ref = REFERENCE[REFERENCE["series"].str.startswith("GPT-2")].set_index("expansion")["percent_in_groups"]
    l1 = "sae.train.l1_coefficient"
    pts[l1] = pts[l1].fillna(rec["sweep"]["set"][l1])  # points outside the L1 grid keep the sweep's set: value
    print("| SAE (ReLU) | L1 | EV | L0 (held-out) | dead | CE loss recovered | firing / tested | ours: in groups "
          "(of d_sae; of firing) | groups | size-capped: in groups | cut, largest component | largest group's median "
          "firing rate (ours; size-capped) | GPT-2 FS (reference) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (d, c), sub in pts.groupby(["d_sae", l1], sort=True):
        o = sub[sub["method"] == "ours"].iloc[0]
        s = sub[sub["method"] == "size_capped"].iloc[0]
        conv = "" if str(s["cut_converged"]).lower() == "true" else " (missed 150-200)"
        r = ref.get(o["expansion"])
        print(f"| {d:,} ({o['expansion']:g}×) | {c:g} | {o['explained_variance']:.3f} | {o['sae_l0']:.1f} | "
              f"{o['dead_fraction']:.3f} | {o['ce_loss_recovered']:.3f} | {int(o['n_alive']):,} / {int(o['n_tested']):,} | "
              f"{pct(o['fraction_in_groups'])}; {pct(o['fraction_of_alive_in_groups'])} | {int(o['n_groups'])} | "
              f"{pct(s['fraction_in_groups'])} | {s['jaccard_cut']:.3f}, {int(s['largest_component'])}{conv} | "
              f"{o['largest_group_median_rate']:.4f}; {s['largest_group_median_rate']:.4f} | "
              f"{'' if r is None else f'{r:g} %'} |")
    fc = pd.read_csv(out / "fate_counts.csv")
    if not fc.empty:
        print()
        table = fc.pivot_table(index=["method", "point_a", "point_b"], columns="fate", values="n_groups",
                               aggfunc="sum", fill_value=0, sort=False)
        cols = [c for c in ("persists", "splits", "dissolves", "vanishes", "new") if c in table.columns]
        print("| method | narrower → wider | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for (m, a, b), row in table.iterrows():
            print(f"| {m} | {a} → {b} | " + " | ".join(str(int(row[c])) for c in cols) + " |")
    print()
    walls = {n: p.get("wall_s") for n, p in rec["points"].items()}
    print(f"sweep wall {rec.get('wall_s')} s (this invocation; finished points are reused), summary "
          f"{rec.get('summary_wall_s')} s; per point (this invocation): {walls}")


if __name__ == "__main__":
    main()
