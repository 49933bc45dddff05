"""Compare two runs' interventions stages that differ in their computation dtype (interventions.dtype): wall time,
agreement of the per-arm effects and of every verdict. Used to validate bfloat16 against float32 on the default.

    cp -r runs/default runs/default_bf16
    .venv/bin/python -m experiments.interventions --out runs/default_bf16 --set interventions.dtype=bfloat16
    .venv/bin/python benchmarks/interventions_dtype_compare.py runs/default runs/default_bf16

Rows are matched on (group, arm, comparator, mode, alpha, effect, scope, family). Contexts, controls and tokens are
chosen from each run's own clean passes, so a token where a latent's activation sits at the firing threshold can go
either way; the script says how many rows kept the same token count.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

a_dir, b_dir = (Path(p) for p in (sys.argv[1:3] if len(sys.argv) > 2 else ("runs/default", "runs/default_bf16")))
KEYS = ["group_id", "arm", "comparator", "mode", "alpha", "effect", "scope", "family"]


def stage(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    return {"dtype": m["config"]["interventions"].get("dtype") or m["config"]["model"]["dtype"],
            "wall_s": m["stages"]["interventions"]["wall_s"]}


def read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "interventions" / name, dtype={"group_id": str})


sa, sb = stage(a_dir), stage(b_dir)
print(f"interventions stage: {sa['dtype']} {sa['wall_s']:.0f} s, {sb['dtype']} {sb['wall_s']:.0f} s "
      f"({sb['wall_s'] / sa['wall_s']:.2f}x)")

ea, eb = read(a_dir, "effects.csv"), read(b_dir, "effects.csv")
m = ea.merge(eb, on=KEYS, suffixes=("_a", "_b"))
print(f"effect rows: {len(ea)} and {len(eb)}, {len(m)} matched, {int((m['n_a'] == m['n_b']).sum())} on the same "
      f"number of tokens")
print("\n| rows | effects | n | Pearson r | Spearman rho | median abs(b - a) / abs(a) | same significance (p_adj < 0.05) |")
print("|---|---|---|---|---|---|---|")


def line(label: str, sub: pd.DataFrame) -> None:
    sub = sub[np.isfinite(sub["estimate_a"]) & np.isfinite(sub["estimate_b"])]
    if len(sub) < 3:
        return
    a, b = sub["estimate_a"].to_numpy(), sub["estimate_b"].to_numpy()
    nz = np.abs(a) > 0
    rel = np.median(np.abs(b[nz] - a[nz]) / np.abs(a[nz])) if nz.any() else float("nan")
    sig = ((sub["p_adj_a"] < 0.05) == (sub["p_adj_b"] < 0.05)).mean()
    print(f"| {label} | {', '.join(sorted(sub['effect'].str.split(':').str[0].unique()))[:80]} | {len(sub)} | "
          f"{np.corrcoef(a, b)[0, 1]:.4f} | {spearmanr(a, b).statistic:.4f} | {rel:.3g} | {sig:.3f} |")


vs_clean = m[m["comparator"] == "clean"]
line("every arm vs clean, group's tokens", vs_clean[vs_clean["scope"] == "fires"])
line("every arm vs clean, collateral", vs_clean[vs_clean["scope"] == "other"])
line("... model effects (ce, kl, margin, read)", vs_clean[(vs_clean["scope"] == "fires")
                                                         & ~vs_clean["effect"].str.startswith(("probe", "logit"))])
line("... task effects (probe*)", vs_clean[(vs_clean["scope"] == "fires") & vs_clean["effect"].str.startswith("probe")])
line("group vs comparators", m[(m["comparator"] != "clean") & (m["scope"] == "fires")])
primary = json.loads((a_dir / "interventions" / "summary.json").read_text()).get("primary")
primary = primary.get("effect") if isinstance(primary, dict) else primary
same_n = m[m["n_a"] == m["n_b"]]
line("every arm vs clean, group's tokens, same token count", same_n[(same_n["comparator"] == "clean")
                                                                    & (same_n["scope"] == "fires")])
if primary:
    line(f"group vs comparators, primary ({primary})", m[(m["comparator"] != "clean") & (m["scope"] == "fires")
                                                        & (m["effect"] == primary)])

va, vb = read(a_dir, "verdicts.csv"), read(b_dir, "verdicts.csv")
v = va.merge(vb, on=["group_id", "mode", "effect"], suffixes=("_a", "_b"))
print(f"\nprimary verdicts: {int((v['verdict_a'] == v['verdict_b']).sum())} of {len(v)} identical; "
      f"vs best single {int((v['beats_best_single_a'] == v['beats_best_single_b']).sum())} of {len(v)}; "
      f"additivity {int((v['additivity_a'] == v['additivity_b']).sum())} of {len(v)}")
for r in v.itertuples():
    print(f"  {r.group_id}: ratio to best single {r.ratio_vs_best_single_a:.3f} vs {r.ratio_vs_best_single_b:.3f}, "
          f"p_adj {r.p_adj_vs_best_single_a:.3g} vs {r.p_adj_vs_best_single_b:.3g}; {r.verdict_a!r} vs {r.verdict_b!r}")
fa, fb = read(a_dir, "effect_verdicts.csv"), read(b_dir, "effect_verdicts.csv")
f = fa.merge(fb, on=["group_id", "mode", "effect"], suffixes=("_a", "_b"))
cols = [c[:-2] for c in f.columns if c.startswith("beats_") and c.endswith("_a")] + ["better_unit"]
print(f"effect verdicts: {len(fa)} and {len(fb)} rows, {len(f)} matched")
for c in cols:
    same = (f[f"{c}_a"].astype(str) == f[f"{c}_b"].astype(str))
    print(f"  {c}: {int(same.sum())} of {len(f)} identical")
print(f"  better-unit rows: {int(f['better_unit_a'].sum())} and {int(f['better_unit_b'].sum())}")
