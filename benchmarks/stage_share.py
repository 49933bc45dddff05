"""Cost of the co-occurrence stage's parts, measured side by side in one run.

    .venv/bin/python benchmarks/stage_share.py [--tokens 16384] [--batch-size 16] [--random-sae]
    .venv/bin/python benchmarks/stage_share.py --memory [--d-sae 262144] [--l0 64] [--mem-tokens 1000000]

1. ``share`` (default): counting's share of the streaming stage on the default model and SAE. Every
   batch of the built-in corpus goes through the three steps the stage runs, each timed on its own:
   model forward truncated at the hook (``sources.stream.hook_activations``), SAE encode + sparse
   conversion (``SAEView.encode_sparse``) and counting (``CooccurrenceCounter.update``; the
   final merge is added to counting). Prints each step's seconds and share of the total; goal:
   counting <= 10 %. ``--random-sae``: a random sae_lens TopK SAE of width 4096 built in-process
   instead of the built-in one (same width and k), for when the built-in SAE is not there yet.
2. ``--memory``: peak RSS of count + score + groups at scale, in a fresh subprocess: every latent fires
   independently with a log-normal (heavy-tailed) rate, rates summing to L0 (cooc.synthetic; the
   worst case for distinct pairs). Counting, then the memory-bounded scoring that ``run_cooc`` uses
   (only pairs with count >= min_count scored; cooc.scoring) and GroupFinder. Files are not written.
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


def random_topk_sae(d_in: int, d_sae: int, k: int, seed: int = 0):
    """A sae_lens TopK SAE with random weights (timing stand-in for the built-in SAE)."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.02)
    return sae.eval()


def share(args) -> None:
    import torch

    from cooc.counting import CooccurrenceCounter
    from experiments.cli import DEFAULT_CONFIG, build_config
    from experiments.config import ExperimentConfig
    from sources.corpora import iter_contexts
    from sources.sae_view import SAEView
    from sources.stream import batched, hook_activations

    cfg = build_config(ExperimentConfig, DEFAULT_CONFIG, [f"data.max_tokens={args.tokens}",
                                                          f"stream.batch_size={args.batch_size}"])
    if args.random_sae:
        from sources.models import load_model

        model = load_model(cfg.model)
        sae = random_topk_sae(model.d_model if hasattr(model, "d_model") else model.hf.config.hidden_size, 4096, args.k)
        sae_name = f"random sae_lens TopK, d_sae 4096, k {args.k}"
    else:
        s = cfg.session(progress=False)
        model, sae = s.model, s.sae
        sae_name = f"built-in ({cfg.sae.builtin}), d_sae {int(sae.cfg.d_sae)}"
    d_sae = int(sae.cfg.d_sae)
    batches = list(batched(iter_contexts(cfg.data, model.tokenizer), cfg.stream.batch_size))
    counter = CooccurrenceCounter(d_sae)
    # warm-up (not timed): one batch through every step
    first = torch.from_numpy(np.stack([c.tokens_L for c in batches[0]]))
    warm = hook_activations(model, first, cfg.hook)
    CooccurrenceCounter(d_sae).update(SAEView(sae).encode_sparse(warm.reshape(-1, warm.shape[-1])))
    t = {"forward": 0.0, "encode": 0.0, "count": 0.0}
    n_tokens = 0
    for contexts in batches:
        tokens_BL = torch.from_numpy(np.stack([c.tokens_L for c in contexts]))
        mask_BL = torch.from_numpy(np.stack([c.mask_L for c in contexts]))
        t0 = time.perf_counter()
        acts_BLD = hook_activations(model, tokens_BL, cfg.hook)
        t1 = time.perf_counter()
        latents = SAEView(sae).encode_sparse(acts_BLD[mask_BL.to(acts_BLD.device)])
        t2 = time.perf_counter()
        counter.update(latents)
        t3 = time.perf_counter()
        t["forward"] += t1 - t0
        t["encode"] += t2 - t1
        t["count"] += t3 - t2
        n_tokens += latents.shape[0]
    t0 = time.perf_counter()
    counter.upper_pairs()  # the final merge belongs to counting
    t["count"] += time.perf_counter() - t0
    total = sum(t.values())
    print(f"torch threads {torch.get_num_threads()}; model {cfg.model.name} ({cfg.model.dtype}) layer {cfg.hook.layer} "
          f"{cfg.hook.site}; SAE {sae_name}; {n_tokens:,} counted tokens in {len(batches)} batches of "
          f"{cfg.stream.batch_size}x{cfg.data.context_len}; L0 {counter.occ_F.sum() / counter.n_tokens_:.1f}; "
          f"{counter.n_pairs_:,} distinct pairs")
    print("| step | s | share of stage | tokens/s |")
    print("|---|---|---|---|")
    for name, label in (("forward", "model forward (truncated at the hook)"), ("encode", "SAE encode + to CSR"),
                        ("count", "co-occurrence counting (incl. final merge)")):
        print(f"| {label} | {t[name]:.2f} | {100 * t[name] / total:.1f}% | {n_tokens / t[name]:,.0f} |")
    print(f"| total | {total:.2f} | 100% | {n_tokens / total:,.0f} |")
    print(f"counting share: {100 * t['count'] / total:.1f}% (goal <= 10%); counting vs forward: "
          f"{t['count'] / t['forward']:.3f}x")


def child_memory(d_sae: int, l0: float, n_tokens: int, min_count: int, min_occurrences: int) -> None:
    """In a fresh process: count, score (memory-bounded) and group; print JSON with peak RSS per phase."""
    from cooc.counting import CooccurrenceCounter
    from cooc.groups import GroupFinder
    from cooc.scoring import score_pairs
    from cooc.synthetic import heavy_tailed_rates, independent_chunk

    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # noqa: E731  (GB; Linux reports KiB)
    out = {"d_sae": d_sae, "rss_before_gb": rss()}
    rate_F = heavy_tailed_rates(d_sae, l0, seed=7)
    rng = np.random.default_rng(8)
    counter = CooccurrenceCounter(d_sae)
    gen = 0.0
    start = time.perf_counter()
    for s in range(0, n_tokens, 4096):
        t = time.perf_counter()
        acts = independent_chunk(rate_F, min(4096, n_tokens - s), rng)
        gen += time.perf_counter() - t
        counter.update(acts)
        if (s // 4096) % 32 == 31:
            print(f"counted {counter.n_tokens_:,} tokens, {counter.n_pairs_:,} stored pairs, peak RSS {rss():.2f} GB",
                  file=sys.stderr, flush=True)
    for s in range(len(counter.bounds_) - 1):
        counter.shard(s)  # the final merge
    out.update(count_s=time.perf_counter() - start, generate_s=gen, peak_rss_count_gb=rss(),
               tokens=int(counter.n_tokens_), l0=float(counter.occ_F.sum() / counter.n_tokens_),
               distinct_pairs=int(counter.n_pairs_), store_gb=counter.nbytes_ / 1e9)
    print(f"counting done: peak RSS {rss():.2f} GB", file=sys.stderr, flush=True)
    t = time.perf_counter()
    scored = score_pairs(counter, min_occurrences=min_occurrences, min_count=min_count)
    out.update(score_s=time.perf_counter() - t, peak_rss_score_gb=rss(), scored_pairs=len(scored),
               tested_latents=int(scored.attrs["n_tested"]), tested_stored=int(scored.attrs["n_tested_stored"]),
               family=int(scored.attrs["family_size"]))
    t = time.perf_counter()
    finder = GroupFinder(min_count=min_count).fit(scored)
    out.update(groups_s=time.perf_counter() - t, peak_rss_gb=rss(), edges=int(finder.edge_mask_.sum()),
               groups=len(finder.groups_))
    print(json.dumps(out))


def memory(args) -> None:
    proc = subprocess.run([sys.executable, __file__, "--child", str(args.d_sae), str(args.l0), str(args.mem_tokens),
                           str(args.min_count), str(args.min_occurrences)], stdout=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"child failed with exit code {proc.returncode}")
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"d_sae={m['d_sae']:,} L0={m['l0']:.1f} tokens={m['tokens']:,}: distinct pairs {m['distinct_pairs']:,} "
          f"(store {m['store_gb']:.2f} GB); tested latents {m['tested_latents']:,}, family m={m['family']:,}, "
          f"stored tested pairs {m['tested_stored']:,}, scored (count >= {args.min_count}) {m['scored_pairs']:,}; "
          f"edges {m['edges']:,}, groups {m['groups']:,}")
    print("| phase | s | peak RSS so far GB |")
    print("|---|---|---|")
    print(f"| before counting | | {m['rss_before_gb']:.2f} |")
    print(f"| count (incl. {m['generate_s']:.0f} s generating data, final merge) | {m['count_s']:.0f} | "
          f"{m['peak_rss_count_gb']:.2f} |")
    print(f"| score (count >= {args.min_count}) | {m['score_s']:.0f} | {m['peak_rss_score_gb']:.2f} |")
    print(f"| groups | {m['groups_s']:.0f} | {m['peak_rss_gb']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=16384, help="corpus tokens for the share run")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--random-sae", action="store_true")
    ap.add_argument("--k", type=int, default=32, help="k of the random TopK SAE (the built-in one has k 32)")
    ap.add_argument("--memory", action="store_true", help="run the count+score peak-RSS section instead")
    ap.add_argument("--d-sae", type=int, default=262_144)
    ap.add_argument("--l0", type=float, default=64.0)
    ap.add_argument("--mem-tokens", type=int, default=1_000_000)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--min-occurrences", type=int, default=10)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        c = args.child
        child_memory(int(c[0]), float(c[1]), int(c[2]), int(c[3]), int(c[4]))
    elif args.memory:
        memory(args)
    else:
        share(args)


if __name__ == "__main__":
    main()
