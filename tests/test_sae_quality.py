"""sources.sae_quality: each metric agrees with an independent computation on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sources.config import DataSpec, HookSpec, StreamSpec
from sources.corpora import iter_contexts
from sources.sae_quality import SAEQuality, evaluate_sae, heldout_data, next_token_ce_sum, training_data
from tests.tiny import tiny_corpus_file, tiny_model

HOOK = HookSpec(layer=1, site="resid_post")
STREAM = StreamSpec(batch_size=4, progress=False)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    path = tiny_corpus_file(tmp_path_factory.mktemp("corpus"), n_docs=30)
    return DataSpec(source="jsonl", path=str(path), context_len=24, max_tokens=24 * 10, holdout_every=3, holdout_only=True)


def random_sae(d_in: int, d_sae: int, kind: str, seed: int = 0, scale: float = 1.0):
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_enc.mul_(scale)
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


def mirror_sae(d_in: int):
    """A ReLU SAE with latents +e_i and -e_i: relu(x) - relu(-x) == x, an exact reconstruction."""
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def reference_metrics(model, sae, data):
    """The metrics computed without sources.stream/patching: plain forward hooks, numpy, F.cross_entropy."""
    contexts = list(iter_contexts(data, model.tokenizer))
    tokens = torch.from_numpy(np.stack([c.tokens_L for c in contexts]))
    mask = torch.from_numpy(np.stack([c.mask_L for c in contexts]))
    block = model.hf.get_submodule(model.site(HOOK.layer, HOOK.site).block)
    captured = {}

    def run(replace=None):
        def hook(mod, args, out):
            hidden = out[0] if isinstance(out, tuple) else out
            captured["x"] = hidden.detach().clone()
            if replace is None:
                return None
            new = torch.where(mask.unsqueeze(-1), replace(hidden), hidden)
            return (new, *out[1:]) if isinstance(out, tuple) else new
        h = block.register_forward_hook(hook)
        try:
            with torch.no_grad():
                logits = model.hf(tokens).logits.float()
        finally:
            h.remove()
        targets = tokens[:, 1:][mask[:, 1:]]
        return F.cross_entropy(logits[:, :-1][mask[:, 1:]], targets).item()

    with torch.no_grad():
        ce_clean = run()
        x = captured["x"][mask]
        feats = sae.encode(x)
        recon = sae.decode(feats)
        ce_spliced = run(lambda h: sae.decode(sae.encode(h)))
        ce_zero = run(torch.zeros_like)
    xn, rn = x.double().numpy(), recon.double().numpy()
    ev = 1 - ((xn - rn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    active = feats.numpy() != 0
    return dict(explained_variance=ev, l0=active.sum(1).mean(), dead_fraction=1 - active.any(0).mean(),
                ce_clean=ce_clean, ce_spliced=ce_spliced, ce_zero_ablation=ce_zero,
                ce_loss_recovered=(ce_zero - ce_spliced) / (ce_zero - ce_clean), n_tokens=int(mask.sum()))


@pytest.mark.parametrize("kind", ["topk", "relu"])
def test_every_metric_matches_an_independent_computation(model, data, kind):
    sae = random_sae(model.d_model, 48, kind)
    q = evaluate_sae(sae, model, HOOK, data, STREAM, progress=False)
    ref = reference_metrics(model, sae, data)
    assert q.n_tokens == ref["n_tokens"] > 0
    for name, value in ref.items():
        # the recovered fraction divides by ce_zero - ce_clean, small on a random model: looser there
        rel = 5e-3 if name == "ce_loss_recovered" else 1e-4
        assert getattr(q, name) == pytest.approx(value, rel=rel, abs=1e-5), name


def test_a_random_sae_reconstructs_badly_and_recovers_little_loss(model, data):
    q = evaluate_sae(random_sae(model.d_model, 48, "topk"), model, HOOK, data, STREAM, progress=False)
    assert q.explained_variance < 0.5
    assert q.l0 == 5
    assert q.ce_spliced > q.ce_clean


def test_a_perfect_sae_explains_all_variance_and_recovers_all_loss(model, data):
    q = evaluate_sae(mirror_sae(model.d_model), model, HOOK, data, STREAM, progress=False)
    assert q.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert q.ce_spliced == pytest.approx(q.ce_clean, abs=1e-6)
    assert q.ce_zero_ablation > q.ce_clean
    assert q.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert q.l0 == pytest.approx(model.d_model, abs=0.5)  # one of +e_i / -e_i per nonzero coordinate


def test_a_latent_that_never_fires_counts_as_dead(model, data):
    sae = mirror_sae(model.d_model)
    with torch.no_grad():
        sae.b_enc[:3] = -1e6  # latents 0..2 can never be positive
    q = evaluate_sae(sae, model, HOOK, data, STREAM, progress=False)
    assert q.dead_fraction == pytest.approx(3 / (2 * model.d_model))


def test_next_token_loss_counts_only_targets_at_unmasked_positions():
    logits = torch.randn(2, 5, 7)
    tokens = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[False, True, True, False, False], [False, True, True, True, True]])
    total, n = next_token_ce_sum(logits, tokens, mask)
    expected = [F.cross_entropy(logits[b, t - 1:t], tokens[b, t:t + 1]).item()
                for b in range(2) for t in range(1, 5) if mask[b, t]]
    assert n == len(expected) == 6
    assert total == pytest.approx(sum(expected), rel=1e-5)


def test_the_heldout_split_holds_exactly_the_documents_the_training_split_skips(model, data):
    full = data.model_copy(update={"holdout_every": 0, "holdout_only": False, "max_tokens": 10**6})
    held = heldout_data(full, max_tokens=10**6)
    train = training_data(full)
    docs = lambda spec: {c.doc_index for c in iter_contexts(spec, model.tokenizer)}  # noqa: E731
    all_docs, held_docs, train_docs = docs(full), docs(held), docs(train)
    assert held.holdout_every == train.holdout_every == 10  # the default split when the data holds none out
    assert held_docs == {d for d in all_docs if d % 10 == 9}
    assert held_docs.isdisjoint(train_docs) and held_docs | train_docs == all_docs


def test_quality_round_trips_through_a_dict_and_prints_a_table():
    q = SAEQuality(0.8, 32.0, 0.01, 2.0, 2.2, 6.0, 0.95, 1000)
    assert SAEQuality.from_dict({**q.to_dict(), "extra": 1}) == q
    assert "CE loss recovered" in q.table() and "0.9500" in q.table()
