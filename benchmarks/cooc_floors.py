"""Edges, groups and held-out replication of the default over firing thresholds x NPMI floors x token budgets.

    .venv/bin/python benchmarks/cooc_floors.py            # the default config; --budgets, --thresholds, --npmi

The default's cooc floors (threshold 0, min_npmi 0.5) are chosen from this table (docs/cooc.md, "Floors"). For
every (threshold, budget) the discovery part and the held-out part of the default corpus are counted with the
stage's own counter (document support included), scored under the document null, and for every NPMI floor the
groups are found and every edge re-tested on the held-out part (cooc.replication), as the stage does. The
activations come once from the default stream (through the activation cache) and are kept in memory.
"""

from __future__ import annotations

import argparse
import time


from cooc import replication
from cooc.config import CoocConfig
from cooc.groups import GroupFinder, groups_frame
from cooc.run import count
from cooc.scoring import score_pairs
from experiments.cli import build_config
from experiments.config import ExperimentConfig


def _load(cfg, part: str) -> list:
    """The part's latent batches (CSR + document ids), read once."""
    session = cfg.session(progress=False)
    return list(session.latent_batches(progress=False, part=part))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/configs/default.yaml")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.0, 5.0, 10.0])  # the default SAE: every active latent is > 2.2
    ap.add_argument("--npmi", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    ap.add_argument("--budgets", type=int, nargs="+", default=[50_000, 100_000, 0],
                    help="content tokens of each part; 0: all the stream gives")
    args = ap.parse_args()
    cfg = build_config(ExperimentConfig, args.config, [])
    t0 = time.time()
    disc, held = _load(cfg, "discovery"), _load(cfg, "heldout")
    print(f"activations read in {time.time() - t0:.0f} s: discovery {sum(b.n_tokens for b in disc):,} tokens, "
          f"held-out {sum(b.n_tokens for b in held):,} tokens")
    print("| firing threshold | tokens per part | NPMI floor | significant pairs | edges | edges (token-iid null) | "
          "groups | largest component | latents in groups | edges replicated | groups' median replication rate |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for thr in args.thresholds:
        for budget in args.budgets:
            base = CoocConfig(**{**cfg.cooc.model_dump(), "threshold": thr, "max_tokens": budget or None})
            c_disc = count(disc, None, base, progress=False)
            c_held = count(held, c_disc.d_sae, base, progress=False)
            scored = score_pairs(c_disc, base.min_occurrences, test="document", min_count=base.min_count)
            scored["documents"] = c_disc.support_.lookup(scored["i"], scored["j"])
            iid = score_pairs(c_disc, base.min_occurrences, test="binomial", min_count=base.min_count)
            iid["documents"] = scored["documents"].to_numpy()
            n_sig = int((scored["p_adj"] < base.alpha).sum())
            for floor in args.npmi:
                fcfg = base.model_copy(update={"min_npmi": floor})
                finder = GroupFinder.from_config(fcfg, cfg.seed).fit(scored)
                edges = scored.loc[finder.edge_mask_, ["i", "j"]]
                rt = replication.retest(edges["i"].to_numpy(), edges["j"].to_numpy(), c_held, "document", base.alpha)
                table = groups_frame(finder.groups_)
                per = replication.group_replication(table, edges["i"].to_numpy(), edges["j"].to_numpy(),
                                                    rt["replicated"].to_numpy())
                n_iid = int(GroupFinder.from_config(fcfg, cfg.seed).fit(iid).edge_mask_.sum())
                rate = rt["replicated"].mean() if len(rt) else float("nan")
                print(f"| {thr:g} | {c_disc.n_tokens_:,} | {floor:g} | {n_sig:,} | {len(edges):,} | {n_iid:,} | "
                      f"{len(finder.groups_)} | {finder.largest_component_:,} | {table['latent'].nunique():,} | "
                      f"{rate:.1%} | {per['replication_rate'].median():.2f} |", flush=True)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
