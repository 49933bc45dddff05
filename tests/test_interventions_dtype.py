"""interventions.dtype: the stage's forward passes in another dtype than model.dtype, everything else unchanged.

The tiny on-disk pipeline (tests/tiny_pipeline.py) runs end to end in float32; its interventions stage is then run
again with ``interventions.dtype: bfloat16``. The option must change the model's arithmetic (the effects differ) and
nothing else (the same SAE object, groups, arms; effects close to the float32 ones).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.cli import build_config
from experiments.config import ExperimentConfig
from experiments.interventions import interventions_stage
from experiments.run import Run
from tiny_pipeline import run_in_process, write_pipeline


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dtype")
    config = write_pipeline(root / "inputs")
    cache = root / "cache"
    out = root / "run"
    run_in_process(config, out, cache)
    return config, out, cache


def _stage(config, out, cache, monkeypatch, *overrides):
    monkeypatch.setenv("COOC_CACHE", str(cache))
    cfg = build_config(ExperimentConfig, config, list(overrides))
    run = Run(out, cfg.model_dump(mode="json"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = interventions_stage(cfg, run, progress=False)
    finally:
        torch.set_num_threads(threads)
    return cfg, pd.read_csv(folder / "effects.csv"), pd.read_csv(folder / "arms.csv")


def test_the_session_of_another_dtype_shares_the_sae_and_computes_in_that_dtype(runs, monkeypatch):
    config, _, cache = runs
    monkeypatch.setenv("COOC_CACHE", str(cache))
    cfg = build_config(ExperimentConfig, config)
    base, bf = cfg.session(False), cfg.session(False, dtype="bfloat16")
    assert base.model.dtype == torch.float32 and bf.model.dtype == torch.bfloat16
    assert next(bf.model.hf.parameters()).dtype == torch.bfloat16
    assert bf.sae is base.sae and bf.hook == base.hook and bf.data == base.data
    assert cfg.session(False, dtype="float32").model is base.model  # the model's own dtype: the same session


def test_bfloat16_evaluation_changes_the_arithmetic_only(runs, monkeypatch):
    config, out, cache = runs
    _, f32, arms32 = _stage(config, out, cache, monkeypatch)
    _, b16, arms16 = _stage(config, out, cache, monkeypatch, "interventions.dtype=bfloat16")
    pd.testing.assert_frame_equal(arms32, arms16)  # the same groups, arms and controls
    keys = ["group_id", "arm", "comparator", "mode", "alpha", "effect", "scope", "family"]
    m = f32.merge(b16, on=keys, suffixes=("_32", "_16"))
    assert len(m) == len(f32) == len(b16)
    assert (m["n_32"] == m["n_16"]).all()  # the same tokens
    vs_clean = m[(m["comparator"] == "clean") & (m["scope"] == "fires") & m["effect"].isin(["kl", "ce", "margin"])]
    a, b = vs_clean["estimate_32"].to_numpy(), vs_clean["estimate_16"].to_numpy()
    assert not np.array_equal(a, b)  # the passes did run in bfloat16
    assert np.corrcoef(a, b)[0, 1] > 0.95, (a, b)
    # bfloat16 keeps 8 bits of mantissa: effects move by rounding, not by orders of magnitude
    big = np.abs(a) > 1e-2
    assert np.all(np.abs(b[big] - a[big]) <= 0.25 * np.abs(a[big]) + 1e-3), np.c_[a[big], b[big]]
