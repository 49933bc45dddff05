"""``python -m experiments.cooc`` end to end on a precomputed activation file, and its bad-input errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cooc import CoocConfig, run_cooc
from cooc.synthetic import planted
from experiments.cooc import main
from sources.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
D_SAE = 400


@pytest.fixture(scope="module")
def acts_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("acts")
    data = planted(d_sae=D_SAE, n_tokens=6000, l0=12, n_hubs=2, n_cliques=2, n_chains=1, seed=4)
    sp.save_npz(folder / "acts.npz", data.acts_TF)
    sp.save_npz(folder / "coo.npz", data.acts_TF.tocoo())
    np.save(folder / "dense.npy", data.acts_TF[:20].toarray())
    np.savez(folder / "plain.npz", x=np.zeros(3))
    (folder / "junk.npz").write_text("not a zip")
    return folder / "acts.npz"


def write_config(tmp_path: Path, acts: Path, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"activations:\n  source: file\n  path: {acts}\ncooc:\n  d_sae: {D_SAE}\n{extra}")
    return cfg


def test_cli_writes_every_documented_file_and_column(tmp_path, acts_file):
    out = tmp_path / "run"
    assert main([str(write_config(tmp_path, acts_file)), "--out", str(out), "--quiet"]) == 0
    folder = out / "cooc"
    occ = np.load(folder / "occurrences.npy")
    assert occ.dtype == np.int64 and occ.shape == (D_SAE,)
    counts = sp.load_npz(folder / "counts.npz")
    assert counts.dtype == np.int64 and (counts != counts.T).nnz == 0
    np.testing.assert_array_equal(counts.diagonal(), occ)
    jac = sp.load_npz(folder / "jaccard.npz")
    assert (jac != jac.T).nnz == 0 and jac.max() <= 1
    pairs = pd.read_parquet(folder / "pairs.parquet")
    assert list(pairs.columns) == ["i", "j", "count", "documents", "expected", "jaccard", "npmi", "p_value", "p_adj", "edge"]
    assert (pairs.i < pairs.j).all() and pairs.edge.any()
    groups = pd.read_csv(folder / "groups.csv")
    from cooc.cofiring import COFIRING_COLUMNS

    # a file without document ids: co-firing structure and Louvain stability, no bootstrap, no replication
    assert list(groups.columns) == ["latent", "group_id", "group_size", "structure", "n_edges", "density",
                                    "degree_centralisation", "clustering", "diameter", *COFIRING_COLUMNS,
                                    "stability_louvain"]
    assert (groups.group_size >= 2).all() and not groups.duplicated(["latent", "group_id"]).any()
    assert (groups.groupby("group_id").size() == groups.groupby("group_id").group_size.first()).all()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["n_tokens"] == 6000 and manifest["seed"] == 0 and manifest["config"]["threshold"] == 0.0
    assert {"packages", "wall_time_s", "family_size", "input"} <= set(manifest)
    assert json.loads((out / "manifest.json").read_text())["stages"]["cooc"]["complete"]
    assert not list(folder.glob(".*tmp*"))  # atomic writes leave no temporaries behind


def test_a_rerun_with_the_same_inputs_is_reused_and_fresh_recomputes(tmp_path, acts_file, caplog):
    caplog.set_level(logging.INFO)
    cfg, out = write_config(tmp_path, acts_file), tmp_path / "run"
    assert main([str(cfg), "--out", str(out), "--quiet"]) == 0
    stamp = (out / "cooc" / "manifest.json").stat().st_mtime_ns
    assert main([str(cfg), "--out", str(out), "--quiet"]) == 0
    assert "up to date" in caplog.text and (out / "cooc" / "manifest.json").stat().st_mtime_ns == stamp
    assert main([str(cfg), "--out", str(out), "--quiet", "--fresh"]) == 0
    assert (out / "cooc" / "manifest.json").stat().st_mtime_ns != stamp
    assert main([str(cfg), "--out", str(out), "--quiet", "--set", "cooc.method=size_target",
                 "--set", "cooc.size_target.min_size=5", "--set", "cooc.size_target.max_size=10"]) == 0
    assert json.loads((out / "cooc" / "manifest.json").read_text())["method"] == "size_target"


@pytest.mark.parametrize("change, needle", [
    ("path=coo.npz", "COO matrix, expected CSR"),
    ("path=dense.npy", "dense array"),
    ("path=plain.npz", "no scipy sparse matrix"),
    ("path=junk.npz", "not a numpy/scipy file"),
    ("path=missing.npz", "does not exist"),
    ("d_sae=512", "d_sae=512"),
    ("threshold=-1", "cooc.threshold"),
    ("max_tokens=0", "cooc.max_tokens"),
])
def test_bad_input_is_one_config_error_line_with_exit_code_2(tmp_path, acts_file, capsys, change, needle):
    key, value = change.split("=")
    overrides = (["--set", f"activations.path={acts_file.parent / value}"] if key == "path"
                 else ["--set", f"cooc.{key}={value}"])
    assert main([str(write_config(tmp_path, acts_file)), "--out", str(tmp_path / "o"), "--quiet", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]


def test_the_module_exits_2_with_one_line_and_no_traceback(tmp_path, acts_file):
    bad = write_config(tmp_path, acts_file.parent / "coo.npz")
    proc = subprocess.run([sys.executable, "-m", "experiments.cooc", str(bad), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "CSR" in proc.stderr


def test_no_tokens_counted_is_a_config_error():
    with pytest.raises(ConfigError, match="no tokens were counted"):
        run_cooc(iter([]), 10, CoocConfig(), None, progress=False)
    with pytest.raises(ConfigError, match="no tokens were counted"):
        run_cooc([sp.csr_matrix((0, 10), dtype=np.float32)], 10, CoocConfig(), None, progress=False)


def test_run_cooc_takes_latent_batches_and_stops_at_max_tokens(acts_file):
    acts = sp.load_npz(acts_file)
    batches = [SimpleNamespace(latents=acts[a:a + 1000], n_tokens=1000) for a in range(0, 6000, 1000)]
    res = run_cooc(batches, D_SAE, CoocConfig(max_tokens=2500), None, progress=False)
    assert res.n_tokens == 2500
    np.testing.assert_array_equal(res.occ_F, np.asarray((acts[:2500] > 0).sum(axis=0)).ravel())
    with pytest.raises(ConfigError, match="d_sae"):
        run_cooc(batches, D_SAE, CoocConfig(d_sae=D_SAE + 1), None, progress=False)
