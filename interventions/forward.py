"""Many intervention arms in one forward pass, and the per-token effects of each arm.

:func:`multi_arm_logits` stacks arms along the batch dimension: the token batch ``[B, L]`` is repeated
``A`` times and arm ``a``'s edit is applied to rows ``a*B .. (a+1)*B`` at the hook, so one forward pass
evaluates ``A`` arms on ``B`` contexts. It is built on :func:`sources.patching.replace_site` (the single
place that writes into an nnsight trace). Rows never interact in a transformer forward pass, so the result
equals running the arms one by one (the tests check it).

:func:`token_effects` turns clean and edited logits into per-position effects on the next-token
prediction: the change in cross-entropy and the KL divergence KL(clean || edited).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from sources.config import HookSpec
from sources.errors import ConfigError
from sources.models import LoadedModel
from sources.patching import Prefix, can_start_at, read_sites

EditFn = Callable[[torch.Tensor], torch.Tensor]

_SITE_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}


def check_read_layer(model: LoadedModel, hook: HookSpec, read_layer: int | None,
                     field: str = "interventions.read_layer") -> None:
    """A read-out layer must exist and come after the hook in the forward pass (its resid_post is read)."""
    if read_layer is None:
        return
    if not 0 <= read_layer < model.n_layers:
        raise ConfigError(field, f"layer {read_layer} does not exist: {model.name} has layers 0..{model.n_layers - 1}")
    if (read_layer, _SITE_ORDER["resid_post"]) <= (hook.layer, _SITE_ORDER[hook.site]):
        raise ConfigError(field, f"layer {read_layer} (resid_post) is not after the hook (layer {hook.layer}, {hook.site}); "
                                 "an intervention cannot change what is computed before it; choose a read_layer "
                                 f"in {hook.layer + (1 if hook.site == 'resid_post' else 0)}..{model.n_layers - 1}")


def resolve_read_layer(model: LoadedModel, hook: HookSpec, read_layer) -> int | None:
    """The read-out layer ``interventions.read_layer`` names: ``auto`` is ``min(hook.layer + 2, n_layers - 1)``
    (None when no resid_post comes after the hook); an explicit layer is checked by :func:`check_read_layer`."""
    if read_layer == "auto":
        layer = min(hook.layer + 2, model.n_layers - 1)
        if (layer, _SITE_ORDER["resid_post"]) <= (hook.layer, _SITE_ORDER[hook.site]):
            return None
        return layer
    check_read_layer(model, hook, read_layer)
    return read_layer


def _stack(fns: Sequence[EditFn], n_rows: int) -> EditFn:
    def stacked(x: torch.Tensor) -> torch.Tensor:
        parts = [fn(x[a * n_rows:(a + 1) * n_rows]) for a, fn in enumerate(fns)]
        return torch.cat(parts, dim=0)

    return stacked


@torch.no_grad()
def _start(model: LoadedModel, hook: HookSpec, x_BLD: torch.Tensor | None, A: int):
    """``read_sites``'s ``start`` for ``A`` stacked copies of the clean value at the hook (None: the full pass)."""
    if x_BLD is None or not can_start_at(model, hook):
        return None
    return hook, x_BLD.repeat(A, *([1] * (x_BLD.dim() - 1)))


@torch.no_grad()
def multi_arm_logits(model: LoadedModel, hook: HookSpec, tokens_BL: torch.Tensor, edits: Sequence[EditFn],
                     read_layer: int | None = None, x_BLD: torch.Tensor | None = None,
                     prefix: Prefix | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits ``[A, B, L, V]`` (float32) of ``A = len(edits)`` arms in one forward pass.

    ``edits[a]`` is an ``EditFn`` (``x [B, L, D] -> x'``) applied at ``hook`` to arm ``a``'s copy of the batch.
    With ``read_layer``, also returns the residual stream (resid_post) at that layer, ``[A, B, L, D]`` float32.
    ``x_BLD``: the clean value at ``hook`` for these tokens (from a clean pass); the blocks before the hook are then
    skipped (:func:`sources.patching.read_sites` with ``start``), which gives the same result without recomputing
    what every arm shares.
    ``prefix``: positions before ``prefix.length`` are the clean pass's (:class:`sources.patching.Prefix`, from a clean
    pass over these B contexts that kept its cache); only the later positions are computed, the edits see those
    (``x [B, L - p, D]``), and the logits and read come back for them only (``[A, B, L - p, ...]``). Exact when no
    arm edits a position before ``p``.
    """
    A, B = len(edits), tokens_BL.shape[0]
    if A == 0:
        raise ValueError("multi_arm_logits needs at least one arm")
    check_read_layer(model, hook, read_layer)
    reads = [HookSpec(layer=read_layer, site="resid_post")] if read_layer is not None else []
    r = read_sites(model, tokens_BL.repeat(A, 1), reads, [(hook, _stack(edits, B))], start=_start(model, hook, x_BLD, A),
                   prefix=prefix)
    logits = r.logits.view(A, B, *r.logits.shape[1:])
    read = r.acts[0].float().view(A, B, *r.logits.shape[1:-1], -1) if reads else None
    return logits, read


@torch.no_grad()
def multi_arm_read(model: LoadedModel, hook: HookSpec, tokens_BL: torch.Tensor, edits: Sequence[EditFn],
                   read_layer: int, x_BLD: torch.Tensor | None = None, prefix: Prefix | None = None) -> torch.Tensor:
    """The residual stream (resid_post) at ``read_layer`` ``[A, B, L, D]`` (float32) of ``A = len(edits)`` arms in
    one forward pass that stops there (no later layer, no unembedding: the task readouts need nothing more).
    ``x_BLD`` as in :func:`multi_arm_logits`: the pass then runs only the blocks from the hook to ``read_layer``;
    ``prefix`` too (the read comes back for positions ``prefix.length..`` only)."""
    A, B = len(edits), tokens_BL.shape[0]
    if A == 0:
        raise ValueError("multi_arm_read needs at least one arm")
    check_read_layer(model, hook, read_layer)
    r = read_sites(model, tokens_BL.repeat(A, 1), [HookSpec(layer=read_layer, site="resid_post")], [(hook, _stack(edits, B))],
                   logits=False, start=_start(model, hook, x_BLD, A), prefix=prefix)
    return r.acts[0].float().view(A, B, r.acts[0].shape[1], -1)


@torch.no_grad()
def clean_hook_and_read(model: LoadedModel, hook: HookSpec, tokens_BL: torch.Tensor,
                        read_layer: int, keep_cache: bool = False):
    """One unedited pass that stops at ``read_layer``: activations at the hook ``[B, L, D]`` (model dtype) and the
    residual (resid_post) at ``read_layer`` ``[B, L, D]`` (float32); with ``keep_cache`` also the pass's key-value
    cache (a :class:`sources.patching.Prefix` source for the arms), else None."""
    x, read, _, cache = clean_pass(model, hook, tokens_BL, read_layer, logits=False, keep_cache=keep_cache)
    return x, read, cache


@torch.no_grad()
def clean_pass(model: LoadedModel, hook: HookSpec, tokens_BL: torch.Tensor, read_layer: int, logits: bool = True,
               keep_cache: bool = False):
    """One unedited pass: activations at the hook ``[B, L, D]`` (model dtype), the residual (resid_post) at
    ``read_layer`` ``[B, L, D]`` (float32), the logits ``[B, L, V]`` (None without ``logits``: the pass then stops at
    ``read_layer``) and, with ``keep_cache``, the pass's key-value cache (else None; it covers the layers the pass
    ran, so arms that go on to the logits need a pass with ``logits``)."""
    check_read_layer(model, hook, read_layer)
    r = read_sites(model, tokens_BL, [hook, HookSpec(layer=read_layer, site="resid_post")], logits=logits,
                   keep_cache=keep_cache)
    return r.acts[0], r.acts[1].float(), (r.logits if logits else None), r.cache


def first_edit(deltas: Sequence[torch.Tensor]) -> int:
    """The first position at which any of ``deltas`` (``[B, L, D]`` each) is non-zero, over all rows (``L`` if none
    is): no position before it changes in a causal model, so a pass may take them from the clean pass
    (:class:`sources.patching.Prefix`)."""
    L = deltas[0].shape[-2]
    hit = torch.zeros(L, dtype=torch.bool, device=deltas[0].device)
    for d in deltas:
        hit |= (d != 0).any(-1).reshape(-1, L).any(0)
    return int(hit.float().argmax()) if bool(hit.any()) else L


def pad_front(x: torch.Tensor, p: int, dim: int, fill: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` with ``p`` positions put back in front along ``dim`` (negative: counted from the end, so that ``x`` may
    carry more leading dimensions than ``fill``): zeros (an effect before the first edit is exactly 0) or the first
    ``p`` positions of ``fill`` (the clean value there, broadcast over ``x``'s leading dimensions)."""
    if p == 0:
        return x
    shape = list(x.shape)
    shape[dim] = p
    front = (torch.zeros(shape, dtype=x.dtype, device=x.device) if fill is None
             else fill.narrow(dim, 0, p).to(device=x.device, dtype=x.dtype).expand(*shape))
    return torch.cat([front, x], dim=dim)


def next_token_logprobs(logits_BLV: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits_BLV.float(), dim=-1)


@torch.no_grad()
def token_effects(clean_logprobs_BLV: torch.Tensor, logits_BLV: torch.Tensor,
                  tokens_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position effects ``[..., B, L]`` of an edit on the next-token prediction.

    ``dce[b, t] = CE_edit - CE_clean`` of predicting ``tokens[b, t+1]`` from position ``t`` and
    ``kl[b, t] = KL(p_clean(.|t) || p_edit(.|t))``, both in nats; the last position is 0 (no next token).
    ``logits_BLV`` may carry leading arm dimensions (``[A, B, L, V]``); the clean side broadcasts.
    """
    lp_c = clean_logprobs_BLV.float()
    lp_e = next_token_logprobs(logits_BLV)
    lead = lp_e.shape[:-3]
    tgt = tokens_BL[:, 1:].to(lp_c.device).unsqueeze(-1)
    ce_c = -lp_c[:, :-1].gather(-1, tgt).squeeze(-1)
    ce_e = -lp_e[..., :-1, :].gather(-1, tgt.expand(*lead, *tgt.shape)).squeeze(-1)
    p_c = lp_c.exp()
    kl = _kl_small_safe(p_c, lp_c, lp_e)
    dce = torch.zeros((*lead, *tokens_BL.shape), dtype=torch.float32, device=lp_c.device)
    dce[..., :-1] = ce_e - ce_c
    kl[..., -1] = 0.0
    return dce, kl


KL_CHUNK_ELEMENTS = 1 << 22
"""Vocabulary entries per float64 chunk of the KL sum (32 MB per temporary)."""


def _kl_small_safe(p_V: torch.Tensor, lp_V: torch.Tensor, lq_V: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` from log-probabilities ``[..., V]`` (``lq`` may carry extra leading arm dimensions), summed so
    that near-zero edits stay above float32's rounding, and row by row identically wherever a row sits in the batch.

    ``sum p*log p - sum p*log q`` cancels two numbers near the entropy (~10 nats) and leaves a floor near 1e-7; so does
    ``sum p*d`` for ``d = log p - log q`` itself, through the rounding of the log-normalisers inside ``d``. Since
    ``KL = sum p*d + log sum p*exp(-d)`` for any constant shift of ``d``, ``d`` is centred on its mean under ``p`` and
    both terms, now of the order of the edit, are summed with ``expm1``/``log1p``. Where the centred ``d`` goes below
    -20 anywhere (an edit far from small, whose KL is far above the floor) the plain ``sum p*d`` is kept.

    The sums run in float64 over chunks of whole rows and are rounded to float32 at the end. In float32, two identical
    arms computed in different places of the stage's batches got KLs one float32 bit apart (seen with two threads;
    tests/test_reliability.py's group of one latent then differed from its own best single latent); in float64 that
    bit is rounded away.
    """
    V = lq_V.shape[-1]
    p_RV, lp_RV = p_V.reshape(-1, V), lp_V.reshape(-1, V)
    R = p_RV.shape[0]
    lq_ARV = lq_V.reshape(-1, R, V)
    out = torch.empty(lq_ARV.shape[:2], dtype=torch.float32, device=lq_V.device)
    step = max(1, KL_CHUNK_ELEMENTS // V)
    for a in range(lq_ARV.shape[0]):
        for r in range(0, R, step):
            p = p_RV[r:r + step].double()
            d = lp_RV[r:r + step].double() - lq_ARV[a, r:r + step].double()
            plain = (p * d).sum(-1)
            d = d - plain.unsqueeze(-1)
            small = d.amin(-1) > -20.0
            fine = (p * d).sum(-1) + (p * torch.expm1(-d.clamp_min(-20.0))).sum(-1).log1p()
            out[a, r:r + step] = torch.where(small, fine, plain).clamp_min(0.0).float()
    return out.reshape(lq_V.shape[:-1])


@torch.no_grad()
def decision_pair(clean_logits_BLV: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean model's top-1 and top-2 next tokens ``[B, L, 2]`` and its margin ``logit(top-1) - logit(top-2)``
    ``[B, L]`` at every position (log-probabilities give the same pair and, up to rounding, the same margin)."""
    lc = clean_logits_BLV.float()
    top = lc.topk(2, dim=-1).indices
    m = lc.gather(-1, top)
    return top, m[..., 0] - m[..., 1]


@torch.no_grad()
def margin_drop(pair: tuple[torch.Tensor, torch.Tensor], logits_BLV: torch.Tensor) -> torch.Tensor:
    """Per-position drop ``[..., B, L]`` of the clean decision margin: ``margin_clean - margin_edit``, both with the
    clean model's top-1 ``i`` and top-2 ``j`` (:func:`decision_pair`). Positive when the edit makes the model less
    sure of its own decision, negative when it reinforces it. ``logits_BLV`` may carry leading arm dimensions."""
    top, m_c = pair
    lead = logits_BLV.shape[:-3]
    m_e = logits_BLV.float().gather(-1, top.expand(*lead, *top.shape))
    return m_c - (m_e[..., 0] - m_e[..., 1])


def token_ids(tokenizer, strings: list[str], field: str) -> list[int]:
    """The ids of token strings that must each be exactly one token (ConfigError naming ``field`` otherwise)."""
    ids = []
    for s in strings:
        enc = tokenizer.encode(s, add_special_tokens=False)
        if len(enc) != 1:
            raise ConfigError(field, f"{s!r} is {len(enc)} tokens for this tokenizer ({enc[:6]}); give strings that are one "
                                     "token each (mind the leading space, e.g. ' com')")
        ids.append(int(enc[0]))
    return ids


def logit_diff(logits_BLV: torch.Tensor, target_ids: list[int], foil_ids: list[int]) -> torch.Tensor:
    """Mean logit of ``target_ids`` minus mean logit of ``foil_ids`` at every position ``[..., B, L]``."""
    lg = logits_BLV.float()
    return lg[..., target_ids].mean(-1) - lg[..., foil_ids].mean(-1)


def margin_effect(clean_logits_BLV: torch.Tensor, logits_BLV: torch.Tensor) -> torch.Tensor:
    """:func:`margin_drop` from the clean logits (or log-probabilities) directly."""
    return margin_drop(decision_pair(clean_logits_BLV), logits_BLV)


def evaluable_positions(mask_BL: torch.Tensor) -> torch.Tensor:
    """Positions whose next-token prediction is scored: content token followed by a content token."""
    m = mask_BL.bool()
    out = torch.zeros_like(m)
    out[:, :-1] = m[:, :-1] & m[:, 1:]
    return out
