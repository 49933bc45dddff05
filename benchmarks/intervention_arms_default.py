"""Cost per arm on the default's own groups, contexts and arms: the full forward, the pass started at the hook, and the
pass that also takes the positions before the first edit from the clean cache, beside a plain forward.

    .venv/bin/python benchmarks/intervention_arms_default.py [runs/default] [--contexts 4] [--groups 0]

Needs a finished default run (``python -m experiments.steer``): its verdicts.csv names the evaluated groups and its
cooc folder their members. For each group this builds what the interventions stage builds (the pool scan, the plan of
arms, the chosen contexts, one clean chunk per context with its key-value cache; ``--contexts`` of them, evenly spaced
over the stage's order) and, for every slice of up to
``batch_size`` live arms the stage would run (sorted by first edited position, as the stage does), times side by side
and in alternating order:

* ``plain``: ``model.hf(tokens)``, a plain transformers forward of the chunk's contexts (no nnsight, no edit);
* ``plain A·B``: the same for the slice's A·B rows;
* ``full``: ``interventions.arms.arm_effects`` with every arm's whole forward (``start_at_hook: false``,
  ``reuse_prefix: false``), effects included;
* ``started``: the same, skipping the blocks before the hook (``start_at_hook: true``, the previous default);
* ``prefix``: started, and only the positions from the slice's first edit on (``reuse_prefix: true``, the default).

Per-arm cost = path / A / plain (issue #16's goal: <= 0.25x for the new path); also path / plain A·B. The largest
difference of any effect (dce, kl, margin, read) between the prefix and full paths is printed: they must agree to
float rounding. Every forward of a slice is timed once; the sums over all slices are compared.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from cooc.result import CoocResult
    from experiments.cli import DEFAULT_CONFIG, build_config
    from experiments.config import ExperimentConfig
    from interventions.arms import (Evaluator, arm_batching, arm_effects, choose_contexts,
                                    plan_arms, scan_pool)
    from interventions.forward import first_edit, resolve_read_layer
    from interventions.modes import needs
    from interventions.pipeline import _rngs, select_groups
    from sources.sae_view import as_view

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default="runs/default")
    ap.add_argument("--contexts", type=int, default=4,
                    help="contexts per group, evenly spaced over the stage's order (which sorts them by the group's "
                         "first firing position, so the first ones are those where it fires earliest)")
    ap.add_argument("--groups", type=int, default=0, help="groups (0: every group of the run)")
    args = ap.parse_args()
    run = Path(args.run)
    ids = pd.read_csv(run / "verdicts.csv", dtype={"group_id": str})["group_id"].tolist()
    if args.groups:
        ids = ids[:args.groups]
    recorded = json.loads((run / "manifest.json").read_text()).get("config")  # the run's own config, else the default's
    cfg = ExperimentConfig.model_validate(recorded) if recorded else build_config(ExperimentConfig, DEFAULT_CONFIG, [])
    s = cfg.session(progress=False)
    model, sae, hook = s.model, s.sae, cfg.hook
    icfg = cfg.interventions.model_copy(update={"groups": ids})
    icfg = icfg.model_copy(update={"read_layer": resolve_read_layer(model, hook, icfg.read_layer)})
    cooc = CoocResult.load(run / "cooc")
    groups = select_groups(cooc, icfg, d_sae=s.d_sae)
    thr = s.view(cfg.cooc.threshold, cfg.cooc.use_sae_threshold).threshold_F
    data = s.data.reading(icfg.evaluate_on)
    pool = scan_pool(model, sae, data, hook, s.stream, groups, thr, icfg.pool_tokens, progress=False,
                     keep_latents="pool_latents" in needs(icfg.modes))
    ev = Evaluator(model, sae, hook, pool, thr, icfg)
    W_eff = as_view(sae).decoder_FD().to(model.device)
    seed = icfg.seed if icfg.seed is not None else cfg.seed
    print(f"torch threads {torch.get_num_threads()}; {model.name} ({cfg.model.dtype}), hook layer {hook.layer} {hook.site} "
          f"of {model.n_layers}; {args.contexts} contexts per group; read layer {icfg.read_layer}")
    print("| group | arms | slices | rows | tokens per context | computed positions (prefix) | plain s | plain A·B s | "
          "full s | started s | prefix s | full per arm / plain | started per arm / plain | prefix per arm / plain | "
          "prefix / plain A·B | prefix / full | max effect diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    total = {k: 0.0 for k in ("plain", "big", "full", "started", "prefix")}
    tot_rows = tot_slices = 0
    worst = 0.0
    worst_by = {}
    with torch.no_grad():
        model.hf(torch.zeros((1, 8), dtype=torch.long, device=model.device))  # warm-up
        for g in groups:
            r_ctx, r_plan, *_, r_arms = _rngs(seed, g.group_id, 8)
            contexts = choose_contexts(pool, g, icfg.max_tokens, icfg.tail_tokens, r_ctx, icfg.max_doc_tokens,
                                       icfg.span_tokens)
            plan = plan_arms(g, pool, W_eff, pool.count_F if cooc.occ_F is None else cooc.occ_F, icfg, r_plan,
                             arm_seed=int(r_arms.integers(2**32)), linked=cooc.linked_pairs())
            per_fwd, _ = arm_batching(len(plan.arms), 1, icfg.batch_size)
            t = {k: 0.0 for k in total}
            rows = slices = 0
            lens, computed = [], []
            step = max(1, len(contexts) // max(args.contexts, 1))
            for ctx, n in contexts[::step][:args.contexts]:
                ch = ev.clean_chunk([ctx], np.zeros(1, dtype=int), g.members, [n])
                kv = ch.kv
                live = [a for a in plan.arms if bool(ev.delta(a, ch).any())]
                live.sort(key=lambda a: first_edit([ev.delta(a, ch)]))
                lens.append(n)
                for a0 in range(0, len(live), per_fwd):
                    deltas = [ev.delta(a, ch) for a in live[a0:a0 + per_fwd]]
                    A = len(deltas)
                    p = first_edit(deltas)
                    computed.append((n - p) / n)
                    t0 = time.perf_counter()
                    model.hf(ch.tokens.to(model.device))
                    t1 = time.perf_counter()
                    model.hf(ch.tokens.repeat(A, 1).to(model.device))
                    t2 = time.perf_counter()
                    ch.kv = None
                    full = arm_effects(ev, ch, deltas, start_at_hook=False)
                    t3 = time.perf_counter()
                    arm_effects(ev, ch, deltas, start_at_hook=True)
                    t4 = time.perf_counter()
                    ch.kv = kv
                    fast = arm_effects(ev, ch, deltas, start_at_hook=True)
                    t5 = time.perf_counter()
                    for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                        t[k] += dt
                    for key in ("dce", "kl", "margin", "read"):
                        if full[key] is not None:
                            diff = float((full[key] - fast[key]).abs().max())
                            worst = max(worst, diff)
                            worst_by[key] = max(worst_by.get(key, 0.0), diff)
                    rows += A
                    slices += 1
                ch.cache.clear()
            for k in total:
                total[k] += t[k]
            tot_rows += rows
            tot_slices += slices
            arms_per_plain = lambda k: t[k] / rows / (t["plain"] / slices)  # noqa: E731  (per arm / one plain forward)
            print(f"| {g.group_id} | {len(plan.arms)} | {slices} | {rows} | {np.mean(lens):.0f} | {np.mean(computed):.2f} | "
                  f"{t['plain']:.2f} | {t['big']:.2f} | {t['full']:.2f} | {t['started']:.2f} | {t['prefix']:.2f} | "
                  f"{arms_per_plain('full'):.2f}x | {arms_per_plain('started'):.2f}x | {arms_per_plain('prefix'):.2f}x | "
                  f"{t['prefix'] / t['big']:.2f}x | {t['prefix'] / t['full']:.2f}x | {worst:.1e} |", flush=True)
    per = lambda k: total[k] / tot_rows / (total["plain"] / tot_slices)  # noqa: E731
    print(f"| all | | {tot_slices} | {tot_rows} | | | {total['plain']:.2f} | {total['big']:.2f} | {total['full']:.2f} | "
          f"{total['started']:.2f} | {total['prefix']:.2f} | {per('full'):.2f}x | {per('started'):.2f}x | "
          f"{per('prefix'):.2f}x | {total['prefix'] / total['big']:.2f}x | {total['prefix'] / total['full']:.2f}x | "
          f"{worst:.1e} |")
    print("largest difference prefix vs full, per effect: " + ", ".join(f"{k} {v:.1e}" for k, v in worst_by.items()))


if __name__ == "__main__":
    main()
