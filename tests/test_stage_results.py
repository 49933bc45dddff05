"""Typed stage results: each stage's result saves and loads its files, checks their format version, and is the
only reader of them (cooc.result, probes.result, interventions.result)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cooc import CoocConfig, GroupFinder, run_cooc, score_pairs
from cooc.counting import CooccurrenceCounter
from cooc.inputs import iter_chunks
from cooc.result import FORMAT_VERSION, CoocResult
from cooc.synthetic import planted
from probes.result import TARGET_COLUMNS, ProbeFigure, ProbesResult
from sources.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return planted(d_sae=400, n_tokens=6000, l0=12, seed=3)


def test_a_cooc_result_saved_and_loaded_equals_the_run_and_an_independent_dense_count(tmp_path, data):
    cfg = CoocConfig(min_occurrences=5, min_count=3, min_npmi=0.2)
    res = run_cooc(iter_chunks(data.acts_TF, 1000), 400, cfg, None, progress=False, seed=0)
    res.save(tmp_path)
    back = CoocResult.load(tmp_path, pairs=True, counts=True)
    assert back.n_tokens == res.n_tokens == 6000 and back.d_sae == 400
    np.testing.assert_array_equal(back.occ_F, res.occ_F)
    pd.testing.assert_frame_equal(back.groups_table, res.groups_table)
    pd.testing.assert_frame_equal(back.pairs, res.pairs)
    # counts and Jaccard on disk against B.T @ B of the binarised activations
    B = (data.acts_TF > 0).astype(np.int64)
    C = (B.T @ B).toarray()
    np.testing.assert_array_equal(back.counts_FF.toarray(), C)
    occ = np.diag(C).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        J = np.where(C > 0, C / (occ[:, None] + occ[None, :] - C), 0.0)
    np.fill_diagonal(J, 0.0)
    np.testing.assert_allclose(sp.load_npz(tmp_path / "jaccard.npz").toarray(), J, rtol=1e-12)
    # the groups read back are the groups a GroupFinder finds on the same scores
    counter = CooccurrenceCounter(400).update(data.acts_TF)
    finder = GroupFinder.from_config(cfg, 0).fit(score_pairs(counter, min_occurrences=5, min_count=3))
    assert [(g.group_id, g.members, g.structure.structure) for g in back.groups] == \
        [(g.group_id, g.members, g.structure.structure) for g in finder.groups_]
    assert len(back.groups) > 3
    assert back.members() == {g.group_id: g.members for g in finder.groups_}


def test_a_cooc_folder_of_another_format_version_or_without_files_is_refused(tmp_path, data):
    res = run_cooc(iter_chunks(data.acts_TF, 1000), 400, CoocConfig(), None, progress=False)
    res.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    for version, words in ((FORMAT_VERSION + 1, f"has format_version {FORMAT_VERSION + 1}"), (None, "has no format_version")):
        edited = {k: v for k, v in manifest.items() if k != "format_version"}
        if version is not None:
            edited["format_version"] = version
        (tmp_path / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(ConfigError) as exc:
            CoocResult.load(tmp_path)
        assert exc.value.field == "cooc" and words in exc.value.message and "--fresh" in exc.value.message
    (tmp_path / "manifest.json").write_text("{trunc")
    with pytest.raises(ConfigError, match="damaged"):
        CoocResult.load(tmp_path)
    with pytest.raises(ConfigError, match="has not run"):
        CoocResult.load(tmp_path / "nowhere")


def test_the_stage_keys_include_the_format_versions(tmp_path, monkeypatch):
    """A folder written in another format is recomputed, not reused and then refused."""
    import experiments.cooc as ec
    from experiments.config import ExperimentConfig
    from experiments.run import Run

    acts = tmp_path / "acts.npz"
    sp.save_npz(acts, sp.csr_matrix(np.eye(4, dtype=np.float32)))
    cfg = ExperimentConfig.model_validate({"activations": {"source": "file", "path": str(acts)}})
    run = Run(tmp_path / "run", cfg.model_dump(mode="json"))
    before = ec.stage_key(cfg, run)
    monkeypatch.setattr(ec, "FORMAT_VERSION", FORMAT_VERSION + 1)
    assert ec.stage_key(cfg, run) != before
    run.close()


def test_a_probes_result_saved_and_loaded_keeps_tables_windows_and_figures(tmp_path):
    results = pd.DataFrame({"task": ["t/a", "t/a"], "group_id": ["g01", None], "arm": ["group_subspace", "residual"],
                            "estimate": [0.25, 0.5]})
    groups = pd.DataFrame({"task": ["t"], "group_id": ["g01"], "enrichment": [3.0], "selected": [True]})
    examples = pd.DataFrame({"task": ["t", "t"], "doc_index": [0, 2], "doc_id": ["007", "x"], "token": ["a", "b"]})
    windows = {"t": [(0, 0, np.array([1, 5, 6]), np.array([False, True, True])), (2, 4, np.array([1, 9]), np.array([False, True]))]}
    points = pd.DataFrame({"doc_id": ["007"], "token": ["a"], "pc1": [0.5], "pc2": [-1.0]})
    summary = {"tasks": {"t": {"figures": {"g01": {"path": "t_groupg01.png", "tokens": 3}}}}}
    res = ProbesResult(results, groups, examples, windows, summary, {"t_groupg01": ProbeFigure(b"\x89PNG fake", points)})
    res.save(tmp_path)
    back = ProbesResult.load(tmp_path)
    pd.testing.assert_frame_equal(back.results, results)
    pd.testing.assert_frame_equal(back.groups, groups)
    pd.testing.assert_frame_equal(back.examples, examples)  # doc ids stay strings ("007")
    assert back.selected_groups() is not None
    assert back.figures["t_groupg01"].png == b"\x89PNG fake"
    pd.testing.assert_frame_equal(back.figures["t_groupg01"].points, points)
    lookup = back.window_lookup()
    assert set(lookup) == {("t", 0, 0), ("t", 2, 4)}
    np.testing.assert_array_equal(lookup[("t", 2, 4)][0], [1, 9])
    np.testing.assert_array_equal(lookup[("t", 0, 0)][1], [False, True, True])
    assert list(back.targets.columns) == TARGET_COLUMNS and back.targets.empty
    summary_file = json.loads((tmp_path / "summary.json").read_text())
    summary_file["format_version"] = 0
    (tmp_path / "summary.json").write_text(json.dumps(summary_file))
    with pytest.raises(ConfigError, match="has format_version 0"):
        ProbesResult.load(tmp_path)
    # a reader of whatever a run folder holds (the report) skips a folder of another format, with a warning
    assert ProbesResult.load_if_current(tmp_path) is None and ProbesResult.load_if_current(tmp_path / "none") is None
    res.save(tmp_path)
    assert ProbesResult.load_if_current(tmp_path) is not None
    # damaged or missing files are refused, never read as "no targets" or "no windows"
    (tmp_path / "targets.csv").write_text("")
    with pytest.raises(ConfigError, match="targets.csv is empty"):
        ProbesResult.load_if_current(tmp_path)
    (tmp_path / "targets.csv").write_text("task,target\n")
    with pytest.raises(ConfigError, match="lacks the column"):
        ProbesResult.load(tmp_path)
    res.save(tmp_path)
    (tmp_path / "windows.npz").unlink()
    with pytest.raises(ConfigError, match="windows.npz is missing"):
        ProbesResult.load(tmp_path)


STAGE_FILES = r'"(groups\.csv|occurrences\.npy|counts\.npz|jaccard\.npz|pairs\.parquet|results\.csv|examples\.csv|' \
              r'effects\.csv|arms\.csv|effect_verdicts\.csv|verdicts\.csv|windows\.npz)"'
READERS = {"cooc/result.py", "probes/result.py", "interventions/result.py", "probes/dataset.py"}


def test_only_the_result_classes_open_a_stage_file():
    """A stage's files are named in code (joined to a path) only by its result class: every other module reads
    them through CoocResult.load, ProbesResult.load or InterventionsResult.load."""
    offenders = []
    for pkg in ("sources", "stats", "cooc", "subspaces", "probes", "interventions", "reports", "experiments"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in READERS:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if re.search(r"/\s*" + STAGE_FILES, code) or re.search(r'"(cooc|probes|interventions)/[\w.]+\.(csv|npy|npz|parquet)"', code):
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
