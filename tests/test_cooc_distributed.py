"""Scale-out of the cooc stage (torchrun, gloo on CPU) and memory-bounded scoring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cooc import CooccurrenceCounter, CoocConfig, GroupFinder, run_cooc, score_pairs
from cooc.distributed import row_range
from cooc.inputs import iter_chunks
from cooc.synthetic import planted
from sources.config import DataSpec
from sources.corpora import iter_contexts
from tiny import tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
D_SAE = 2500  # > 2048: the pair store has 2 row shards, so the shard-by-shard reduction is exercised


@pytest.fixture(scope="module")
def acts_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("acts")
    data = planted(d_sae=D_SAE, n_tokens=9001, l0=16, n_hubs=2, n_cliques=2, n_chains=1, seed=3)
    sp.save_npz(folder / "acts.npz", data.acts_TF)
    return folder / "acts.npz"


def _config(tmp_path: Path, acts: Path) -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"activations:\n  source: file\n  path: {acts}\ncooc:\n  d_sae: {D_SAE}\n  chunk_tokens: 1000\n")
    return cfg


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_two_gloo_ranks_give_the_single_process_result_byte_for_byte(tmp_path, acts_file):
    cfg = _config(tmp_path, acts_file)
    one, two = tmp_path / "one", tmp_path / "two"
    single = _run(["-m", "experiments.cooc", str(cfg), "--out", str(one), "--quiet"])
    assert single.returncode == 0, single.stderr
    dist = _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "experiments.cooc", str(cfg), "--out", str(two), "--quiet"])
    assert dist.returncode == 0, dist.stderr
    a, b = one / "cooc", two / "cooc"
    ca, cb = np.load(a / "counts.npz"), np.load(b / "counts.npz")
    assert sorted(ca.files) == sorted(cb.files)
    for name in ca.files:
        assert np.array_equal(ca[name], cb[name]), name
    assert (a / "groups.csv").read_bytes() == (b / "groups.csv").read_bytes()
    assert (a / "occurrences.npy").read_bytes() == (b / "occurrences.npy").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(a / "pairs.parquet"), pd.read_parquet(b / "pairs.parquet"))
    ma, mb = (json.loads((x / "manifest.json").read_text()) for x in (a, b))
    assert mb["input"]["world_size"] == 2 and mb["input"]["backend"] == "gloo"
    for key in ("n_tokens", "n_pairs_stored", "n_edges", "n_groups", "family_size"):
        assert ma[key] == mb[key], key
    assert pd.read_csv(b / "groups.csv").shape[0] > 0
    assert json.loads((two / "manifest.json").read_text())["stages"]["cooc"]["complete"]


def test_row_ranges_and_context_shards_partition_the_input(tmp_path):
    for n, world in ((10, 3), (2, 4), (9001, 2)):
        ranges = [row_range(n, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(ranges[k][1] == ranges[k + 1][0] for k in range(world - 1))
    words = "the cat sat on a mat and then it ran far away from home".split()
    rng = np.random.default_rng(0)
    for d in range(6):
        (tmp_path / f"doc{d}.txt").write_text(" ".join(rng.choice(words, 60 + 20 * d)))
    spec = DataSpec(source="text", path=str(tmp_path), context_len=16, max_tokens=16 * 11)
    tok = tiny_tokenizer()
    whole = list(iter_contexts(spec, tok))
    assert len(whole) >= 6
    parts = [list(iter_contexts(spec, tok, shard=(r, 3))) for r in range(3)]
    assert all(c.index % 3 == r for r, part in enumerate(parts) for c in part)
    merged = sorted((c for part in parts for c in part), key=lambda c: c.index)
    assert [c.index for c in merged] == [c.index for c in whole]
    assert all(np.array_equal(x.tokens_L, y.tokens_L) and np.array_equal(x.mask_L, y.mask_L)
               for x, y in zip(merged, whole))


def test_counters_of_row_shards_merge_to_the_whole(acts_file):
    acts = sp.load_npz(acts_file).tocsr()
    whole = CooccurrenceCounter(D_SAE).update(acts)
    parts = [CooccurrenceCounter(D_SAE).update(acts[slice(*row_range(acts.shape[0], r, 3))]) for r in range(3)]
    merged = parts[0] + parts[1] + parts[2]
    assert (merged.counts_ != whole.counts_).nnz == 0 and merged.n_tokens_ == whole.n_tokens_


def test_memory_bounded_scoring_gives_the_same_edges_and_groups():
    """Scoring only pairs with count >= min_count (others p = 1 in BH over the same m) versus every pair."""
    data = planted(d_sae=3000, n_tokens=30_000, l0=30, seed=5)
    counter = CooccurrenceCounter(3000)
    for chunk in iter_chunks(data.acts_TF, 4096):
        counter.update(chunk)
    full = score_pairs(counter, min_occurrences=10)
    bounded = score_pairs(counter, min_occurrences=10, min_count=5)
    assert len(bounded) < len(full) / 3  # far fewer rows: most stored pairs are thin chance pairs
    assert bounded.attrs["family_size"] == full.attrs["family_size"]
    assert bounded.attrs["n_tested_stored"] == full.attrs["n_tested_stored"] == len(full)
    # same rows as the full table filtered by count, same statistics; adjusted p only ever larger
    kept = full[full["count"] >= 5].reset_index(drop=True)
    for col in ("i", "j", "count", "expected", "jaccard", "npmi", "p_value"):
        np.testing.assert_array_equal(bounded[col].to_numpy(), kept[col].to_numpy())
    assert (bounded["p_adj"].to_numpy() >= kept["p_adj"].to_numpy() - 1e-15).all()
    f_full, f_bounded = GroupFinder(seed=0).fit(full), GroupFinder(seed=0).fit(bounded)
    edges = lambda df, m: set(zip(df.i[m].tolist(), df.j[m].tolist()))  # noqa: E731
    assert edges(full, f_full.edge_mask_) == edges(bounded, f_bounded.edge_mask_)
    assert len(f_full.groups_) >= 8
    assert [g.members for g in f_full.groups_] == [g.members for g in f_bounded.groups_]
    # run_cooc (method significant) uses the bounded scoring; size_target keeps every stored pair
    res = run_cooc(iter_chunks(data.acts_TF, 4096), 3000, CoocConfig(), None, progress=False)
    assert len(res.pairs) == len(bounded) and res.manifest["n_pairs_tested_stored"] == len(full)
    assert [g.group_id for g in res.groups] == [g.group_id for g in f_full.groups_]
    cfg = CoocConfig(method="size_target", size_target={"min_size": 5, "max_size": 20})
    assert len(run_cooc(iter_chunks(data.acts_TF, 4096), 3000, cfg, None, progress=False).pairs) == len(full)


def test_counts_matrix_input_honours_min_count():
    data = planted(d_sae=600, n_tokens=5000, l0=10, n_hubs=1, n_cliques=1, n_chains=0, seed=1)
    counter = CooccurrenceCounter(600).update(data.acts_TF)
    a = score_pairs(counter, min_occurrences=5, min_count=3)
    b = score_pairs(counter.counts_, n_tokens=counter.n_tokens_, min_occurrences=5, min_count=3)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert a.attrs["n_tested_stored"] == b.attrs["n_tested_stored"]


def test_stream_shards_count_to_the_whole_stream(tmp_path, monkeypatch):
    import torch

    from sources.config import HookSpec, StreamSpec
    from sources.stream import cache_dir_for, iter_latents
    from tiny import tiny_corpus_file, tiny_model

    monkeypatch.setenv("COOC_CACHE", str(tmp_path / "cache"))
    model = tiny_model("llama")
    data = DataSpec(source="jsonl", path=str(tiny_corpus_file(tmp_path)), context_len=16, max_tokens=16 * 9)

    class ReluSAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.W_dec = torch.nn.Parameter(torch.randn(40, model.d_model))

        def encode(self, x):
            return torch.relu(x @ self.W_dec.T)

    hook, stream = HookSpec(layer=1), StreamSpec(batch_size=2, progress=False, cache=True)
    count = lambda shard: sum((CooccurrenceCounter(40).update(b.latents)  # noqa: E731
                               for b in iter_latents(model, ReluSAE(), data, hook, stream, False, shard)),
                              CooccurrenceCounter(40))
    whole = count(None)
    parts = [count((r, 2)) for r in range(2)]
    merged = parts[0] + parts[1]
    assert min(p.n_tokens_ for p in parts) > 0 and merged.n_tokens_ == whole.n_tokens_
    assert (merged.counts_ != whole.counts_).nnz == 0
    dirs = {cache_dir_for(model, hook, data, stream, s) for s in (None, (0, 2), (1, 2))}
    assert len(dirs) == 3 and all(d.exists() for d in dirs)  # each shard has its own activation cache
