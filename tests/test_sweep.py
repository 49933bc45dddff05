"""python -m experiments.sweep on tiny models: points are ordinary run folders, they share the activation and SAE
caches, a killed sweep resumes point by point, a bad grid exits 2 with one line; and the numeric cores of the
comparison (fraction in groups, the size-capped cut, group matching across widths) against direct computations."""

from __future__ import annotations

import os

import networkx as nx
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import cooc.run
import experiments.sweep as sweep_mod
import sources.stream
from cooc.counting import CooccurrenceCounter
from cooc.population import ours, size_capped
from cooc.result import CoocResult
from tiny_pipeline import write_pipeline

BASE = """
seed: 0
model: {{name: {root}/model, device: cpu}}
hook: {{layer: 1}}
sae: {{train: {{architecture: relu, d_sae: 32, l1_coefficient: 0.5, training_tokens: 2560, batch_size: 128, lr: 0.003,
               eval_tokens: 64}}}}
data: {{source: jsonl, path: {root}/corpus.jsonl, context_len: 32, max_tokens: 1024}}
stream: {{batch_size: 4, cache: true}}
cooc: {{min_occurrences: 3, min_count: 2, min_npmi: 0.1, max_group_size: 6, chunk_tokens: 64, stability_replicates: 0}}
report: {{enabled: false}}
"""

SWEEP = """
base: base.yaml
grid:
{grid}
match: {{series: sae.train.d_sae, min_cosine: 0.3}}
size_capped: {{min_size: 3, max_size: 8}}
out: {root}/{out}
"""
FULL = "  - {sae.train.d_sae: [64, 32]}\n  - {sae.train.d_sae: [64], sae.train.l1_coefficient: [2.0]}"  # listed wide first


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny model, corpus and a base config; a private COOC_CACHE for the module."""
    root = tmp_path_factory.mktemp("sweep")
    write_pipeline(root)
    (root / "base.yaml").write_text(BASE.format(root=root))
    old, threads = os.environ.get("COOC_CACHE"), torch.get_num_threads()
    os.environ["COOC_CACHE"] = str(root / "cache")
    torch.set_num_threads(1)
    yield root
    torch.set_num_threads(threads)
    if old is None:
        os.environ.pop("COOC_CACHE", None)
    else:
        os.environ["COOC_CACHE"] = old


def write_sweep(root, grid: str, out: str, name: str = "sweep.yaml"):
    path = root / name
    path.write_text(SWEEP.format(grid=grid, root=root, out=out))
    return path


def counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapped(*a, **kw):
        calls.append(1)
        return real(*a, **kw)
    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.fixture(scope="module")
def swept(world):
    """One point alone (fills the caches), then the whole sweep in another folder, counting model forwards."""
    mp = pytest.MonkeyPatch()
    try:
        first = counting(mp, sources.stream, "hook_activations")
        assert sweep_mod.main([str(write_sweep(world, "  sae.train.d_sae: [32]", "one")), "--quiet"]) == 0
        n_first = len(first)
        mp.undo()
        later = counting(mp, sources.stream, "hook_activations")
        assert sweep_mod.main([str(write_sweep(world, FULL, "full")), "--quiet"]) == 0
        return world / "full", n_first, len(later)
    finally:
        mp.undo()


def test_every_point_is_an_ordinary_run_folder_and_the_sweep_writes_its_comparison(swept):
    out, _, _ = swept
    names = ["d_sae=32", "d_sae=64", "d_sae=64__l1_coefficient=2.0"]
    for name in names:
        result = CoocResult.load(out / "points" / name / "cooc")
        assert result.d_sae == int(name.split("__")[0].split("=")[1])
        assert (out / "points" / name / "manifest.json").exists()
    points = pd.read_csv(out / "points.csv")
    assert sorted(points["point"].unique()) == sorted(names)
    assert set(points["method"]) == {"ours", "size_capped"} and len(points) == 6
    assert {"fraction_in_groups", "l0", "explained_variance", "ce_loss_recovered", "replication_rate"} <= set(points)
    sizes = pd.read_csv(out / "group_sizes.csv")
    assert set(sizes["point"]) == set(names)
    # the width series is matched narrow to wide (32 -> 64, although the grid lists 64 first); the L0 point forms a
    # series of its own
    fates = pd.read_csv(out / "fates.csv")
    assert set(zip(fates["point_a"], fates["point_b"])) == {("d_sae=32", "d_sae=64")}
    assert set(fates["method"]) == {"ours", "size_capped"}
    assert set(fates["fate"]) <= {"persists", "splits", "dissolves", "vanishes", "new"}
    narrow = CoocResult.load(out / "points" / "d_sae=32" / "cooc")
    ours_a = fates[(fates["method"] == "ours") & (fates["side"] == "a")]
    assert set(ours_a["group"]) == set(narrow.members())  # every group of the narrower SAE is followed
    page = (out / "report.html").read_text()
    assert "Latents in groups" in page and "GPT-2 L8 feature splitting" in page and "data:image/png" in page


def test_points_share_the_activation_cache_and_the_trained_saes(swept):
    _, n_first, n_later = swept
    assert n_first > 0  # the first point streamed the corpus (training, discovery and held-out parts)
    assert n_later == 0  # no point of the whole sweep ran the model up to the hook again


def test_the_sweep_tables_agree_with_each_points_own_cooc_result(swept):
    out, _, _ = swept
    points = pd.read_csv(out / "points.csv").set_index(["point", "method"])
    for name in ("d_sae=32", "d_sae=64"):
        result = CoocResult.load(out / "points" / name / "cooc", counts=True)
        grouped = result.groups_table["latent"].nunique()
        row = points.loc[(name, "ours")]
        assert row["latents_in_groups"] == grouped
        assert row["fraction_in_groups"] == pytest.approx(grouped / result.d_sae)
        assert row["l0"] == pytest.approx(result.occ_F.sum() / result.n_tokens)
        cut = size_capped(result, min_size=3, max_size=8)
        row = points.loc[(name, "size_capped")]
        assert row["latents_in_groups"] == cut.n_grouped and row["n_groups"] == cut.n_groups
        assert row["jaccard_cut"] == pytest.approx(cut.cut)


def test_a_killed_sweep_resumes_point_by_point(world, swept, monkeypatch):
    path = write_sweep(world, FULL, "killed")
    real, calls = sweep_mod.run_point, []

    def dies_on_second(point, *a, **kw):
        calls.append(point.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(point, *a, **kw)
    monkeypatch.setattr(sweep_mod, "run_point", dies_on_second)
    assert sweep_mod.main([str(path), "--quiet"]) == 130
    assert not (world / "killed" / "points.csv").exists()
    monkeypatch.setattr(sweep_mod, "run_point", real)
    computed = counting(monkeypatch, cooc.run, "run_cooc")
    assert sweep_mod.main([str(path), "--quiet"]) == 0
    assert len(computed) == 2  # the first point's cooc stage was reused, the other two computed
    # the resumed sweep's comparison is the uninterrupted one's
    for name in ("points.csv", "group_sizes.csv", "fates.csv", "matches.csv"):
        assert (world / "killed" / name).read_bytes() == (world / "full" / name).read_bytes(), name


@pytest.mark.parametrize("grid, fragment", [
    ("  sae.train.dsae: [32]", "point dsae=32: sae.train.dsae: unknown key"),
    ("  sae.train.d_sae: [0]", "point d_sae=0: sae.train.d_sae: Input should be greater than or equal to 1"),
    ("  sae.train.d_sae: []", "grid: sae.train.d_sae has no values"),
    ("  sae.train.d_sae: 32", "grid"),
    ("  sae.train.l1_coefficient: [1.0]", "match.series: sae.train.d_sae is not a grid key"),
    ("  out: [a, b]", "grid.out: each point's folder is OUT/points/<name>"),
])
def test_a_bad_grid_exits_2_with_one_line_and_writes_nothing(world, capsys, grid, fragment):
    path = write_sweep(world, grid, "bad", name="bad.yaml")
    capsys.readouterr()
    assert sweep_mod.main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not (world / "bad").exists()


def test_the_sweep_command_needs_a_sweep_file(capsys):
    assert sweep_mod.main([]) == 2
    assert "give a sweep file" in capsys.readouterr().err


def test_point_names_use_the_last_key_part_unless_two_keys_share_it():
    keys = ["sae.train.d_sae", "probes.n_groups", "interventions.n_groups"]
    assert sweep_mod.point_name({"sae.train.d_sae": 576}, keys) == "d_sae=576"
    assert sweep_mod.point_name({"probes.n_groups": 2, "sae.train.d_sae": "a/b"}, keys) == \
        "probes.n_groups=2__d_sae=a-b"


# ------------------------------------------------------------------------------------------ numeric cores

def _result_from_binary(B: np.ndarray, groups: dict[str, list[int]]) -> CoocResult:
    counter = CooccurrenceCounter(B.shape[1])
    counter.update(sp.csr_matrix(B.astype(np.float32)))
    rows = [(m, g, len(ms), "clique", 1, 1.0, 0.0, 1.0, 1) for g, ms in groups.items() for m in ms]
    table = pd.DataFrame(rows, columns=["latent", "group_id", "group_size", "structure", "n_edges", "density",
                                        "degree_centralisation", "clustering", "diameter"])
    r = CoocResult(counter.occ_F, table, {"n_tokens": B.shape[0]})
    r.counter = counter
    return r


def test_fraction_in_groups_and_l0_match_a_direct_count():
    rng = np.random.default_rng(0)
    B = rng.random((400, 20)) < 0.1
    B[:, 19] = False  # a dead latent
    r = _result_from_binary(B, {"ga": [0, 1, 2], "gb": [5, 6]})
    pop = ours(r)
    assert pop.n_grouped == 5 and pop.fraction == pytest.approx(5 / 20)
    assert pop.n_alive == int((B.sum(0) > 0).sum()) == 19 and pop.fraction_alive == pytest.approx(5 / 19)
    assert pop.l0 == pytest.approx(B.sum() / 400)


def test_the_size_capped_cut_matches_components_of_a_dense_jaccard_graph():
    rng = np.random.default_rng(1)
    T, F = 3000, 60
    base = rng.random((T, 6)) < 0.08  # six hidden causes, each driving a block of ten latents
    B = np.zeros((T, F), dtype=bool)
    for f in range(F):
        B[:, f] = (base[:, f // 10] & (rng.random(T) < 0.6 + 0.03 * (f % 10))) | (rng.random(T) < 0.01)
    r = _result_from_binary(B, {})
    pop = size_capped(r, min_size=8, max_size=10)
    assert pop.converged and 8 <= pop.largest_component <= 10
    # independent: dense Jaccard from the binary matrix, the graph of pairs above the cut, its components
    X = B.astype(np.float64)
    inter = X.T @ X
    occ = np.diag(inter)
    jac = inter / (occ[:, None] + occ[None, :] - inter)
    g = nx.Graph()
    g.add_edges_from((i, j) for i in range(F) for j in range(i + 1, F) if inter[i, j] > 0 and jac[i, j] > pop.cut)
    comps = sorted(sorted(c) for c in nx.connected_components(g) if len(c) >= 2)
    assert sorted(sorted(gr.members) for gr in pop.groups) == comps
    assert max(len(c) for c in comps) == pop.largest_component


def test_groups_are_followed_to_a_wider_sae_persisting_splitting_dissolving_vanishing_or_new():
    from subspaces.matching import match_groups, parents

    rng = np.random.default_rng(2)
    D = 64
    A = rng.standard_normal((10, D))
    A /= np.linalg.norm(A, axis=1, keepdims=True)

    def near(v, eps=0.1):
        w = v + eps * rng.standard_normal(D) / np.sqrt(D)
        return w / np.linalg.norm(w)
    # B's latents: 0-1 near A0, A1; 2-3 near A2 and 4-5 near A3 (A's group {2, 3} shared out over two groups); 6 near
    # A4 but in no group (A's {4, 5} dissolves); nothing near A6, A7 (A's {6, 7} vanishes); 7-8 random (a new group);
    # 9 near A1 and 10 near A2: a group whose parents tie between two of A's groups, so it gets one ancestor only
    B = np.stack([near(A[0]), near(A[1]), near(A[2]), near(A[2]), near(A[3]), near(A[3]), near(A[4]),
                  rng.standard_normal(D), rng.standard_normal(D), near(A[1]), near(A[2])])
    groups_a = {"a01": (0, 1), "a23": (2, 3), "a45": (4, 5), "a67": (6, 7)}
    groups_b = {"b01": (0, 1), "b23": (2, 3), "b45": (4, 5), "b78": (7, 8), "b910": (9, 10)}
    links, fates = match_groups(A, groups_a, B, groups_b, min_cosine=0.8)
    fate = dict(zip(fates["group"], fates["fate"]))
    assert fate == {"a01": "splits", "a23": "splits", "a45": "dissolves", "a67": "vanishes", "b78": "new"}
    assert sorted(zip(links["group_a"], links["group_b"])) == [("a01", "b01"), ("a01", "b910"), ("a23", "b23"),
                                                               ("a23", "b45")]
    row = links.set_index("group_b").loc["b910"]
    assert row["share"] == 0.5 and row["coverage"] == 0.5
    assert links.set_index("group_b").loc["b23", "coverage"] == 0.5  # only A2 of {2, 3} is a parent there
    # a stricter share leaves the tied group without an ancestor
    links, fates = match_groups(A, groups_a, B, groups_b, min_cosine=0.8, min_share=0.6)
    assert dict(zip(fates["group"], fates["fate"]))["a01"] == "persists" and "b910" not in set(links["group_b"])
    # an independent parent computation: argmax of the dense cosine matrix
    par, cos = parents(A, B, None, min_cosine=0.8)
    C = B @ A.T / np.linalg.norm(B, axis=1, keepdims=True) / np.linalg.norm(A, axis=1)
    expect = np.where(C.max(1) >= 0.8, C.argmax(1), -1)
    assert (par == expect).all() and np.allclose(cos, C.max(1), atol=1e-6)
    with pytest.raises(ValueError, match="do not share a space"):
        parents(A, B[:, :32])


def test_the_reference_numbers_in_the_code_are_the_ones_the_docs_cite():
    import re
    from pathlib import Path

    from reports.sweep import REFERENCE

    doc = (Path(__file__).resolve().parents[1] / "docs" / "sweeps.md").read_text()
    cited = doc[doc.index("**The reference's numbers**"):]
    for r in REFERENCE.itertuples(index=False):
        x = f"{r.l0:g}" if r.l0 == r.l0 and r.l0 is not None else f"{r.d_sae:,}"
        y = f"{r.percent_in_groups:g}"
        assert re.search(rf"{re.escape(x)}[^,;]*?→ (about )?{re.escape(y)}\b", cited), (x, y)
        assert ("about" in re.search(rf"{re.escape(x)}[^,;]*?→ (about )?{re.escape(y)}", cited).group(0)) == r.approximate


def test_a_point_reached_twice_runs_once(world):
    from pathlib import Path

    path = write_sweep(world, "  - {sae.train.d_sae: [32]}\n  - {sae.train.d_sae: [32], sae.train.l1_coefficient: [0.5]}",
                       "dup", name="dup.yaml")
    points = sweep_mod.expand(sweep_mod.load_sweep(path), Path(path).parent)
    assert [p.name for p in points] == ["d_sae=32"]  # the base's l1 is 0.5: the second mapping adds nothing


def test_an_input_that_does_not_open_stops_the_sweep_before_any_point_runs(world, capsys):
    path = world / "badpath.yaml"
    path.write_text(f"base: base.yaml\ngrid:\n  data.path: [{world}/corpus.jsonl, {world}/missing.jsonl]\n"
                    f"out: {world}/badpath\n")
    capsys.readouterr()
    assert sweep_mod.main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: point path=") and "missing.jsonl" in err[0], err
    assert not (world / "badpath").exists()


def test_the_shipped_sweep_expands_to_the_width_and_l0_series():
    from pathlib import Path

    path = Path(sweep_mod.CONFIG_DIR) / "sweep_widths.yaml"
    points = sweep_mod.expand(sweep_mod.load_sweep(path), path.parent)
    widths = {l1: sorted(p.cfg.sae.train.d_sae for p in points if p.cfg.sae.train.l1_coefficient == l1) for l1 in (5.0, 1.5)}
    assert widths == {5.0: [576, 1152, 2304, 4608, 9216], 1.5: [576, 1152, 2304, 4608]}
    assert all(p.cfg.sae.train.architecture == "relu" for p in points)
    assert sorted(p.cfg.sae.train.l1_coefficient for p in points if p.cfg.sae.train.d_sae == 2304) == [1.5, 3.0, 5.0, 10.0, 20.0]
    assert len(points) == 12


def test_the_largest_groups_median_firing_rate_is_its_members_median():
    rng = np.random.default_rng(3)
    B = rng.random((500, 12)) < np.linspace(0.01, 0.3, 12)
    r = _result_from_binary(B, {"big": [1, 4, 9], "small": [2, 3]})
    assert ours(r).row()["largest_group_median_rate"] == pytest.approx(np.median(B[:, [1, 4, 9]].mean(0)))


def test_the_size_capped_cut_without_pair_counts_names_the_fix():
    from sources.errors import ConfigError

    r = CoocResult(np.ones(4, dtype=np.int64), pd.DataFrame({"latent": [], "group_id": []}), {"n_tokens": 10})
    with pytest.raises(ConfigError, match="has no pair counts .*rerun the co-occurrence stage"):
        size_capped(r)
