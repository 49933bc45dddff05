"""Co-occurrence counting cost: sparse counter versus dense batched Bᵀ B in torch, memory at 262k latents,
and the error of optional pruning.

    .venv/bin/python benchmarks/cooc_counting.py [--tokens 1000000] [--compare-tokens 65536] [--l0 48]

Data: every latent fires independently with a log-normal (heavy-tailed) rate, rates summing to L0
(cooc.synthetic). Independence is the worst case for memory (almost every pair-occurrence is a new
pair); real SAEs co-fire in structured ways and store fewer distinct pairs.

1. d_sae = 4,096 / 16,384 / 65,536: time of CooccurrenceCounter versus dense float32 ``Bᵀ B`` on
   4,096-token batches in torch on the same tokens, with an identical-counts check. Dense work is
   2·d_sae²·T flops and d_sae² floats of memory, so it runs on fewer tokens at 16,384, and at 65,536
   (2 × 17 GB, beyond this machine) only one 4,096-row block of one batch is timed, checked and scaled up.
2. d_sae = 262,144, L0 = 64, --tokens tokens: peak RSS of the counter in a fresh subprocess.
3. Pruning: exact versus prune_below on planted data: pairs stored, pairs/edges/groups changed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cooc.counting import CooccurrenceCounter  # noqa: E402
from cooc.synthetic import heavy_tailed_rates, independent_chunk  # noqa: E402

BATCH = 4096


def chunks(d_sae: int, l0: float, n_tokens: int, seed: int):
    rate_F = heavy_tailed_rates(d_sae, l0, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for start in range(0, n_tokens, BATCH):
        yield independent_chunk(rate_F, min(BATCH, n_tokens - start), rng)


def time_sparse(batches, d_sae: int) -> tuple[float, CooccurrenceCounter]:
    counter = CooccurrenceCounter(d_sae)
    start = time.perf_counter()
    for acts in batches:
        counter.update(acts)
    counter.upper_pairs()  # include the final merge
    return time.perf_counter() - start, counter


def time_dense(batches, d_sae: int, rows: int | None = None):
    """Dense float32 Bᵀ B accumulated over batches (rows: only the first `rows` rows of the result)."""
    import torch

    torch.set_num_threads(2)
    rows = rows or d_sae
    acc = torch.zeros(rows, d_sae, dtype=torch.float32)
    start = time.perf_counter()
    for acts in batches:
        B = torch.zeros(acts.shape[0], d_sae, dtype=torch.float32)
        r, c = acts.nonzero()
        B[torch.from_numpy(r.astype(np.int64)), torch.from_numpy(c.astype(np.int64))] = 1.0
        acc.addmm_(B[:, :rows].T, B)
    return time.perf_counter() - start, acc


def compare(d_sae: int, l0: float, sparse_tokens: int, dense_tokens: int, dense_rows: int | None) -> dict:
    data = list(chunks(d_sae, l0, max(sparse_tokens, dense_tokens), seed=d_sae))
    t_sparse_all, _ = time_sparse(data[: -(-sparse_tokens // BATCH)], d_sae)
    dense_data = data[: -(-dense_tokens // BATCH)]
    t_sparse, counter = time_sparse(dense_data, d_sae)
    t_dense, acc = time_dense(dense_data, d_sae, dense_rows)
    rows = dense_rows or d_sae
    ours = counter.counts_[:rows].toarray()
    ref = acc.numpy().astype(np.int64)  # its diagonal is the occurrences, like counts_
    identical = bool(np.array_equal(ours, ref))
    scale = d_sae / rows
    return {"d_sae": d_sae, "l0": round(counter.occ_F.sum() / counter.n_tokens_, 1), "dense_tokens": dense_tokens,
            "dense_rows": rows, "t_dense_s": t_dense * scale, "dense_extrapolated": scale > 1,
            "t_sparse_same_s": t_sparse, "sparse_tokens": sparse_tokens, "t_sparse_all_s": t_sparse_all,
            "speedup": t_dense * scale / t_sparse, "identical": identical,
            "dense_mem_gb": 2 * 4 * d_sae ** 2 / 1e9, "pairs": counter.n_pairs_}


def child_memory(d_sae: int, l0: float, n_tokens: int, export: bool) -> None:
    """Run in a subprocess: count, then print JSON with peak RSS."""
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    counter = CooccurrenceCounter(d_sae)
    gen = 0.0
    it = chunks(d_sae, l0, n_tokens, seed=7)
    while True:
        t = time.perf_counter()
        acts = next(it, None)
        gen += time.perf_counter() - t
        if acts is None:
            break
        counter.update(acts)
    for s in range(len(counter.bounds_) - 1):
        counter.shard(s)  # final merge: one run per shard
    rss_count = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t_count = time.perf_counter() - start
    n_pairs = counter.n_pairs_
    if export:
        counter.upper_pairs()
    out = {"peak_rss_counting_gb": rss_count / 1e6, "count_s": t_count, "exported": export,"d_sae": d_sae, "tokens": counter.n_tokens_, "l0": counter.occ_F.sum() / counter.n_tokens_,
           "distinct_pairs": int(n_pairs), "store_gb": counter.nbytes_ / 1e9,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "rss_before_gb": rss0 / 1e6,
           "total_s": time.perf_counter() - start, "generate_s": gen}
    print(json.dumps(out))


def memory(d_sae: int, l0: float, n_tokens: int, export: bool) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(d_sae), str(l0), str(n_tokens), str(int(export))],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def pruning(prune_below: int, prune_every: int, seed: int = 0) -> dict:
    """Exact versus pruned counts on planted data: what changes downstream."""
    from cooc import CoocConfig, run_cooc
    from cooc.recovery import adjusted_rand, labels_from_groups
    from cooc.inputs import iter_chunks
    from cooc.synthetic import planted

    data = planted(d_sae=6000, n_tokens=120_000, l0=40, seed=seed)
    res = {}
    for pb in (0, prune_below):
        cfg = CoocConfig(prune_below=pb, prune_every=prune_every, chunk_tokens=BATCH)
        res[pb] = run_cooc(iter_chunks(data.acts_TF, BATCH), 6000, cfg, None, progress=False, seed=seed)
    exact, lossy = res[0], res[prune_below]
    key = lambda df: set(zip(df.i.tolist(), df.j.tolist()))  # noqa: E731
    e_pairs, l_pairs = exact.manifest["n_pairs_stored"], lossy.manifest["n_pairs_stored"]
    ex = exact.pairs.set_index(["i", "j"])["count"]
    lo = lossy.pairs.set_index(["i", "j"])["count"].reindex(ex.index, fill_value=0)
    big = ex >= 5
    e_edges, l_edges = key(exact.pairs[exact.pairs.edge]), key(lossy.pairs[lossy.pairs.edge])
    return {"prune_below": prune_below, "prune_every": prune_every, "pairs_exact": e_pairs, "pairs_pruned": l_pairs,
            "changed_pairs_count_ge_5": float((lo[big] != ex[big]).mean()),
            "mean_rel_undercount_ge_5": float(((ex[big] - lo[big]) / ex[big]).mean()),
            "lost_pairs_count_ge_5": float((lo[big] == 0).mean()),
            "edges_exact": len(e_edges), "edges_changed": len(e_edges ^ l_edges) / max(1, len(e_edges)),
            "groups_ari": adjusted_rand(labels_from_groups([g.members for g in exact.groups], 6000),
                                        labels_from_groups([g.members for g in lossy.groups], 6000))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=1_000_000, help="tokens for the 262,144-latent memory run")
    ap.add_argument("--compare-tokens", type=int, default=65_536, help="tokens for the sparse timings")
    ap.add_argument("--l0", type=float, default=48.0, help="mean active latents per token in the timing runs")
    ap.add_argument("--skip", nargs="*", default=[], choices=["compare", "memory", "prune"])
    ap.add_argument("--export", action="store_true",
                    help="also export the pairs to (i, j, count) arrays in the memory run (+12 bytes per pair)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_memory(int(args.child[0]), float(args.child[1]), int(args.child[2]), bool(int(args.child[3])))
        return
    if "compare" not in args.skip:
        print("| d_sae | L0 | dense torch tokens | dense torch s | ours s (same tokens) | speed-up | identical | "
              f"ours s ({args.compare_tokens:,} tokens) | dense memory GB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for d_sae, dense_tokens, rows in ((4096, args.compare_tokens, None), (16_384, 8192, None),
                                          (65_536, 4096, 4096)):
            r = compare(d_sae, args.l0, args.compare_tokens, dense_tokens, rows)
            note = " (1/16 of rows timed, x16)" if r["dense_extrapolated"] else ""
            print(f"| {d_sae:,} | {r['l0']} | {r['dense_tokens']:,} | {r['t_dense_s']:.1f}{note} | "
                  f"{r['t_sparse_same_s']:.2f} | {r['speedup']:.0f}x | {r['identical']} | "
                  f"{r['t_sparse_all_s']:.1f} | {r['dense_mem_gb']:.1f} |", flush=True)
    if "memory" not in args.skip:
        m = memory(262_144, 64.0, args.tokens, args.export)
        exported = f", after exporting (i, j, count) arrays {m['peak_rss_gb']:.2f} GB" if m["exported"] else ""
        print(f"\nd_sae=262,144 L0={m['l0']:.1f} tokens={m['tokens']:,}: distinct pairs {m['distinct_pairs']:,}, "
              f"pair store {m['store_gb']:.2f} GB; peak RSS while counting {m['peak_rss_counting_gb']:.2f} GB"
              f"{exported} (process before counting {m['rss_before_gb']:.2f} GB); {m['count_s']:.0f} s counting "
              f"incl. {m['generate_s']:.0f} s generating data", flush=True)
    if "prune" not in args.skip:
        print("\n| prune_below | every (chunks) | pairs stored exact | pruned | pairs with count>=5 changed | "
              "mean relative undercount | lost entirely | edges exact | edges changed | groups ARI vs exact |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for pb, every in ((2, 4), (3, 8)):
            p = pruning(pb, every)
            print(f"| {pb} | {every} | {p['pairs_exact']:,} | {p['pairs_pruned']:,} | "
                  f"{100 * p['changed_pairs_count_ge_5']:.2f}% | {100 * p['mean_rel_undercount_ge_5']:.2f}% | "
                  f"{100 * p['lost_pairs_count_ge_5']:.2f}% | {p['edges_exact']} | "
                  f"{100 * p['edges_changed']:.2f}% | {p['groups_ari']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
