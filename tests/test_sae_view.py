"""sources.sae_view: the firing rule on every container against a plain comparison, and the SAE view against
sae_lens's own encode/decode (real sae_lens TopK and JumpReLU SAEs, built in-process)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sources.sae_view import SAEView, as_view, fires, to_csr


def _acts(seed=0, n=50, f=12):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, f)).astype(np.float32)
    a[a < 0.3] = 0.0  # sparse, non-negative, with exact zeros
    return a


@pytest.mark.parametrize("threshold", [0.0, 0.7, "per_latent"])
def test_fires_agrees_on_numpy_torch_and_sparse(threshold):
    a = _acts()
    thr = np.linspace(0.0, 1.5, a.shape[1]).astype(np.float32) if threshold == "per_latent" else threshold
    expected = np.zeros_like(a, dtype=bool)
    for i in range(a.shape[0]):  # the rule written out element by element
        for j in range(a.shape[1]):
            expected[i, j] = a[i, j] > (thr[j] if isinstance(thr, np.ndarray) else thr)
    assert np.array_equal(fires(a, thr), expected)
    assert np.array_equal(fires(torch.from_numpy(a), thr).numpy(), expected)
    sparse = fires(sp.csr_matrix(a), thr)
    assert sp.issparse(sparse) and sparse.dtype == bool
    assert np.array_equal(sparse.toarray(), expected)
    assert sparse.nnz == int(expected.sum())  # only the firing entries are stored


def test_fires_is_strict_and_sparse_keeps_row_structure():
    a = np.array([[0.5, 0.0, 1.0], [0.0, 0.0, 0.0], [0.5, 0.6, 0.4]], dtype=np.float32)
    assert fires(a, 0.5).tolist() == [[False, False, True], [False, False, False], [False, True, False]]
    m = fires(sp.csr_matrix(a), 0.5)
    assert m.indptr.tolist() == [0, 1, 1, 2] and m.indices.tolist() == [2, 1]
    empty = fires(sp.csr_matrix((3, 4), dtype=np.float32), 0.0)
    assert empty.shape == (3, 4) and empty.nnz == 0


def _topk(rescale: bool, seed: int = 0):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=16, d_sae=40, k=5, rescale_acts_by_decoder_norm=rescale)).eval()
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(40, 1) * 3 + 0.2)  # rows of unequal norms, so the rescaling matters
        sae.b_dec.normal_()
    return sae.requires_grad_(False)


@pytest.mark.parametrize("rescale", [False, True])
def test_decoder_as_applied_reproduces_sae_lens_decode(rescale):
    sae = _topk(rescale)
    view = SAEView(sae)
    x = torch.randn(30, 16)
    f = view.encode(x)
    assert f.dtype == torch.float32 and f.shape == (30, 40) and not f.is_sparse
    expected = sae.decode(f) - sae.b_dec  # sae_lens's own reconstruction, minus its bias
    assert torch.allclose(f @ view.decoder_FD(), expected, atol=1e-5)
    assert np.allclose(view.decoder_np(), view.decoder_FD().numpy(), atol=1e-7)
    assert torch.allclose(view.decode(f), sae.decode(f))
    assert (view.encode_sparse(x).toarray() == f.numpy()).all()
    assert to_csr(f).nnz == int((f != 0).sum())


def test_the_jumprelu_theta_is_applied_once_and_only_when_used():
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=8, d_sae=6)).eval()
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5]))
    view = SAEView(sae, threshold=0.25)
    assert np.allclose(view.theta_F, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert np.allclose(view.threshold_F, np.maximum(0.25, view.theta_F)) and view.threshold_F.dtype == np.float32
    assert np.allclose(SAEView(sae, 0.25, use_sae_threshold=False).threshold_F, 0.25)
    assert SAEView(_topk(False)).theta_F is None and np.all(SAEView(_topk(False), 0.5).threshold_F == 0.5)
    a = np.array([[0.3, 0.3, 0.3, 0.3, 0.45, 0.45]], dtype=np.float32)
    assert view.fires(a).tolist() == [[True, True, True, False, True, False]]  # a > max(0.25, θ)
    assert as_view(view) is view and as_view(sae).sae is sae


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.7])
def test_the_firing_rule_on_a_jumprelu_sae_is_sae_lens_own_firing_above_the_threshold(threshold):
    """Against sae_lens's encode: a JumpReLU latent fires where sae_lens outputs a value > threshold (its output is
    already 0 unless the pre-activation exceeds θ). The old rule, activation > threshold + θ, counted θ twice."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    torch.manual_seed(0)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=16, d_sae=64)).eval()
    with torch.no_grad():
        for p in (sae.W_enc, sae.b_enc):
            p.copy_(torch.randn_like(p) * 0.5)
        sae.threshold.copy_(torch.rand(64) * 0.6)
    x = torch.randn(500, 16)
    with torch.no_grad():
        ref = sae.encode(x)  # sae_lens's own JumpReLU
    view = SAEView(sae, threshold=threshold)
    got = view.fires(view.encode(x))
    want = (ref > threshold).numpy()
    assert np.array_equal(np.asarray(got), want) and want.any() and (~want).any()
    # the same rule on pre-activations that never passed through the JumpReLU
    with torch.no_grad():
        pre = torch.relu(view.sae.process_sae_in(x) @ sae.W_enc + sae.b_enc)
    assert np.array_equal(np.asarray(view.fires(pre)), want)
    if threshold > 0:  # what adding θ would have dropped
        doubled = ref.numpy() > threshold + sae.threshold.detach().numpy()
        assert (want & ~doubled).any()


def test_output_scale_undoes_input_normalisation():
    sae = _topk(False)
    view = SAEView(sae)
    x = torch.randn(4, 16) * 5
    assert view.output_scale(x) is None
    sae.cfg.normalize_activations = "constant_norm_rescale"
    assert torch.allclose(view.output_scale(x), x.norm(dim=-1, keepdim=True) / 4.0)
    sae.cfg.normalize_activations = "something_new"
    from sources.errors import ConfigError

    with pytest.raises(ConfigError, match="something_new"):
        view.output_scale(x)
