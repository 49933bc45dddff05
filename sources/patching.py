"""Editing a site's value inside a forward pass: the one place that writes into an nnsight trace.

A site is what :meth:`LoadedModel.site` resolves a ``(layer, site)`` to: a module and whether the
value is that module's *input* (``resid_pre``: the hidden states entering block ``layer``) or its
*output* (``resid_post``, ``attn_out``, ``mlp_out``). Decoder blocks return a tensor in some
transformers versions and a tuple in others; an edit replaces the hidden states and keeps the rest.

An edit is a plain function ``edit_fn(acts_BLD) -> new_acts_BLD`` on real tensors (nnsight runs the
trace body as ordinary Python), e.g. ``lambda x: sae(x)`` (splice in an SAE reconstruction),
``torch.zeros_like`` (zero ablation) or ``lambda x: x + alpha * v`` (steering). Its result is cast
to the site's dtype and device.

- :func:`read_sites` -- the primitive every forward pass of the project goes through: read one or more sites,
  with optional edits, and the logits or an early stop after the last site.
- :func:`clean_logits` -- logits of an unedited forward pass.
- :func:`run_with_site_edit` -- logits with one site edited.
- :func:`run_with_edits` -- logits with several sites edited in one pass (applied in forward order).
- :func:`clean_logits_and_site` -- one clean pass: the site's activations and the logits.
- :func:`replace_site` -- the edit inside an open ``model.lm.trace`` (what :func:`read_sites` calls).
- :class:`Prefix` -- the keys and values of a clean pass (``read_sites(keep_cache=True)``): a later pass over the same
  tokens that changes nothing before position ``p`` runs only positions ``p..`` on top of them (transformers'
  ``DynamicCache``, the model's own attention).

Every function here runs under ``torch.no_grad`` and returns float32 logits ``[B, L, V]``.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from sources import sites
from sources.config import HookSpec
from sources.models import LoadedModel
from sources.sites import SitePath

EditFn = Callable[[torch.Tensor], torch.Tensor]

# order of the sites inside one block, as the forward pass reaches them
_SITE_ORDER = {"resid_pre": 0, "attn_out": 1, "mlp_out": 2, "resid_post": 3}


def _with_hidden(value, hidden: torch.Tensor):
    """``value`` (a tensor or a tuple whose first element is the hidden states) with ``hidden`` swapped in."""
    if isinstance(value, tuple):
        return (hidden, *value[1:])
    if isinstance(value, list):
        return [hidden, *value[1:]]
    return hidden


def _apply(edit_fn: EditFn, acts: torch.Tensor, where: SitePath) -> torch.Tensor:
    new = edit_fn(acts)
    if not isinstance(new, torch.Tensor):
        raise TypeError(f"the edit at {where.hook_name} returned {type(new).__name__}, not a tensor")
    if new.shape != acts.shape:
        raise ValueError(f"the edit at {where.hook_name} changed the shape {tuple(acts.shape)} -> {tuple(new.shape)}")
    return new.to(device=acts.device, dtype=acts.dtype)


def replace_site(model: LoadedModel, where: SitePath, edit_fn: EditFn) -> None:
    """Inside an open ``model.lm.trace``: replace the value at ``where`` by ``edit_fn(value)``.

    nnsight 0.8 requires modules to be reached in forward order within one trace, so several
    calls in one trace must go from early to late sites (see :func:`run_with_edits`).
    """
    envoy = model.envoy(where.module)
    if where.io == "input":
        acts = envoy.input
        envoy.input = _apply(edit_fn, acts, where)
    else:
        value = envoy.output
        acts = sites.first_tensor(value)
        envoy.output = _with_hidden(value, _apply(edit_fn, acts, where))


def _logits_of(output) -> torch.Tensor:
    logits = output.logits if hasattr(output, "logits") else sites.first_tensor(output)
    return logits.float()


def _forward_key(model: LoadedModel, hook: HookSpec) -> tuple[int, int]:
    return hook.layer, _SITE_ORDER[hook.site]


@dataclass
class Reading:
    """What one forward pass of :func:`read_sites` returns."""

    acts: list[torch.Tensor]
    """The value at each site read ``[B, L, D]`` (model dtype), in the order the sites were given."""
    logits: torch.Tensor | None
    """Logits ``[B, L, V]`` (float32), or None when the pass stopped after its last site."""
    cache: object | None = None
    """With ``keep_cache``: the pass's keys and values (a transformers ``DynamicCache`` over every layer that ran)."""


@dataclass
class Prefix:
    """Positions ``0..length-1`` of a pass, taken from a clean pass over the same tokens instead of recomputed.

    In a causal model nothing at a position before the first edited one can change, in any layer, so a pass whose
    edits all come at or after ``length`` needs the clean keys and values of the earlier positions and computes only
    the later ones (the model's own attention over transformers' cache: nothing of the transformer is re-implemented).
    ``cache`` is :attr:`Reading.cache` of a clean ``read_sites(..., keep_cache=True)`` over ``R`` rows; the pass that
    uses it has ``k * R`` rows, row ``i`` continuing clean row ``i % R`` (arms stacked along the batch, arm-major)."""

    cache: object
    length: int


def _cache_kwarg(model: LoadedModel) -> str:
    """The forward keyword that takes a key-value cache: ``cache`` in recent transformers, ``past_key_values`` before."""
    params = inspect.signature(model.hf.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def can_reuse_prefix(model: LoadedModel) -> bool:
    """Whether the model's forward takes a key-value cache (transformers' llama, gemma3, gpt2 and most decoder-only
    models), so that :class:`Prefix` can be used. The model places the new positions after the cached ones itself
    (as in generation, with an attention mask over cached and new positions); the tests check the result against
    the full pass for each family."""
    params = inspect.signature(model.hf.forward).parameters
    return "cache" in params or "past_key_values" in params


def _prefix_cache(prefix: Prefix, n_rows: int, run: range):
    """A new cache holding positions ``< prefix.length`` of ``prefix.cache``, tiled to ``n_rows`` rows; every layer
    in ``run`` (the blocks the pass computes) must be there, the others are kept where present."""
    from transformers import DynamicCache

    p, layers = prefix.length, prefix.cache.layers
    data = []
    for i in range(max(len(layers), run.stop)):
        layer = layers[i] if i < len(layers) else None
        keys = getattr(layer, "keys", None)
        if keys is None or keys.numel() == 0 or keys.shape[-2] < p or getattr(layer, "is_sliding", False):
            if i in run or i == 0:
                raise ValueError(f"read_sites: the clean cache lacks positions 0..{p - 1} of layer {i}, which the pass "
                                 "computes (keep it with read_sites(keep_cache=True) over the same tokens and layers)")
            data.append((None, None))
            continue
        rows = keys.shape[0]
        if n_rows % rows:
            raise ValueError(f"read_sites: {n_rows} rows cannot continue a clean cache of {rows} rows")
        reps = (n_rows // rows, 1, 1, 1)
        data.append((keys[:, :, :p].repeat(*reps), layer.values[:, :, :p].repeat(*reps)))
    return DynamicCache(ddp_cache_data=data)


_BLOCKS_RETURN_TENSORS: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def blocks_return_tensors(model: LoadedModel) -> bool:
    """Whether the model's decoder blocks return the hidden states as a plain tensor (transformers 5: llama, gemma3
    and gpt2 do) rather than a tuple; found once per model with one two-token forward and a plain PyTorch hook."""
    key = model.hf
    if key not in _BLOCKS_RETURN_TENSORS:
        block = model.hf.get_submodule(model.site(0, "resid_post").block)
        seen = {}
        handle = block.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
        try:
            with torch.no_grad():
                model.hf(torch.zeros((1, 2), dtype=torch.long, device=model.device))
        finally:
            handle.remove()
        _BLOCKS_RETURN_TENSORS[key] = isinstance(seen.get("out"), torch.Tensor)
    return _BLOCKS_RETURN_TENSORS[key]


def can_start_at(model: LoadedModel, hook: HookSpec) -> bool:
    """Whether :func:`read_sites` can start a pass at ``hook`` (``start=``): a residual-stream site after block 0's
    input, in a model whose blocks return tensors."""
    return hook.site in ("resid_post", "resid_pre") and (hook.site == "resid_post" or hook.layer > 0) \
        and blocks_return_tensors(model)


@torch.no_grad()
def read_sites(model: LoadedModel, tokens_BL: torch.Tensor, reads: Sequence[HookSpec] = (),
               edits: Sequence[tuple[HookSpec, EditFn]] = (), logits: bool = True,
               start: tuple[HookSpec, torch.Tensor] | None = None, prefix: Prefix | None = None,
               keep_cache: bool = False) -> Reading:
    """One forward pass that reads ``reads``, applies ``edits`` and returns what was read: the project's only trace.

    Sites are visited in forward order whatever order they are given in (nnsight 0.8 requires it); several edits of
    one site are chained in the given order; a site read twice is read once. Without ``logits`` the pass stops right
    after the last site read or edited, so no later layer runs. A site cannot be both edited and read (read the next
    site instead).

    ``start=(hook, x_BLD)``: the value at ``hook`` (a residual-stream site, :func:`can_start_at`) is already known for
    this batch (e.g. from a clean pass over the same tokens), so every block before it is skipped (nnsight's
    ``Envoy.skip``: their forward does not run) and the site takes ``x_BLD`` (edits at ``hook`` apply to it). Later
    layers run as in the full pass, so the result equals the full pass's up to float rounding (the clean value was
    computed in another batch). Reads and edits must come at or after ``hook``.

    ``prefix`` (a :class:`Prefix` of length ``p`` from a clean pass over the same tokens): only positions ``p..L-1``
    are computed, on top of the clean keys and values of the earlier ones. ``tokens_BL`` (and ``start``'s value) are
    still the whole ``[B, L]`` contexts; the edit functions see, and the reads and logits return, positions ``p..``
    only (``[B, L - p, ...]``). Exact only if the pass changes nothing before ``p`` (the caller's guarantee).
    ``keep_cache``: keep this pass's keys and values (:attr:`Reading.cache`) for later passes' prefixes.
    """
    if start is not None:
        s_hook, s_x = start
        if not can_start_at(model, s_hook):
            raise ValueError(f"a pass cannot start at {s_hook.site} of layer {s_hook.layer}; use the full pass")
        s_key = _forward_key(model, s_hook)
        if any(_forward_key(model, h) < s_key for h, _ in edits) or any(_forward_key(model, h) < s_key for h in reads):
            raise ValueError("read_sites: with start, every read and edit comes at or after the start site")
    keyed: dict[tuple[int, int], dict] = {}

    def entry(h: HookSpec) -> dict:
        return keyed.setdefault(_forward_key(model, h), {"where": model.site(h.layer, h.site), "fns": [], "read": False})

    for h, fn in edits:
        entry(h)["fns"].append(fn)
    for h in reads:
        e = entry(h)
        if e["fns"]:
            raise ValueError(f"{e['where'].hook_name} is both edited and read in one pass; read a later site")
        e["read"] = True
    if not logits and not keyed:
        raise ValueError("read_sites: nothing to read and no logits asked for")
    saved: dict[tuple[int, int], object] = {}
    kwargs, p = {}, 0
    if start is not None:  # the last block skipped (its output is the start value)
        last = s_hook.layer if s_hook.site == "resid_post" else s_hook.layer - 1
    if prefix is not None and prefix.length > 0:
        if keep_cache:
            raise ValueError("read_sites: a pass continuing a prefix cannot keep its cache")
        p = int(prefix.length)
        if not 0 < p < tokens_BL.shape[1]:
            raise ValueError(f"read_sites: a prefix of {p} positions leaves nothing of {tokens_BL.shape[1]} to compute")
        first = 0 if start is None else last + 1
        stop = model.n_layers if logits else max(k[0] + (0 if k[1] == 0 else 1) for k in keyed)
        kwargs = {_cache_kwarg(model): _prefix_cache(prefix, tokens_BL.shape[0], range(first, stop)), "use_cache": True,
                  # the mask covers the cached positions too (as in generation); nnsight's own would cover only the new
                  "attention_mask": torch.ones(tokens_BL.shape, dtype=torch.long, device=model.device)}
    elif keep_cache:
        from transformers import DynamicCache

        kept = DynamicCache()  # no config: sliding-window layers keep every position too (the mask applies the window)
        kwargs = {_cache_kwarg(model): kept, "use_cache": True}
    with model.lm.trace(tokens_BL[:, p:].to(model.device), **kwargs) as tracer:
        if start is not None:
            root = model.site(0, "resid_post").block.rsplit(".", 1)[0]
            x0 = s_x[:, p:].to(device=model.device, dtype=model.dtype)
            start_fns = keyed.get(s_key, {}).get("fns") if s_hook.site == "resid_post" else None
            for i in range(last + 1):
                value = x0
                if i == last and start_fns:  # the start site's own edits, applied to the given value
                    value = _apply(_chain(start_fns), x0, keyed[s_key]["where"])
                model.envoy(f"{root}.{i}").skip(value)
            if start_fns:
                keyed.pop(s_key)
            elif s_hook.site == "resid_post" and keyed.get(s_key, {}).get("read"):
                saved[s_key] = x0
                keyed.pop(s_key)
        for key in sorted(keyed):
            e = keyed[key]
            if e["fns"]:
                replace_site(model, e["where"], _chain(e["fns"]))
            if e["read"]:
                envoy = model.envoy(e["where"].module)
                saved[key] = (envoy.input if e["where"].io == "input" else envoy.output).save()
        if logits:
            out = model.lm.output.save()
        else:
            tracer.stop()
    acts = [sites.first_tensor(saved[_forward_key(model, h)]) for h in reads]
    return Reading(acts, _logits_of(out) if logits else None, kept if keep_cache and p == 0 else None)


@torch.no_grad()
def run_with_edits(model: LoadedModel, tokens_BL: torch.Tensor,
                   edits: Sequence[tuple[HookSpec, EditFn]]) -> torch.Tensor:
    """Logits ``[B, L, V]`` (float32) of a forward pass with every ``(hook, edit_fn)`` applied.

    Edits are applied in forward order whatever order they are given in; two edits of the
    same site are applied one after the other, in the given order.
    """
    return read_sites(model, tokens_BL, edits=edits).logits


def _chain(fns: list[EditFn]) -> EditFn:
    if len(fns) == 1:
        return fns[0]

    def chained(x: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return chained


def run_with_site_edit(model: LoadedModel, tokens_BL: torch.Tensor, hook: HookSpec, edit_fn: EditFn) -> torch.Tensor:
    """Logits ``[B, L, V]`` (float32) with the value at ``hook`` replaced by ``edit_fn(value)``."""
    return run_with_edits(model, tokens_BL, [(hook, edit_fn)])


@torch.no_grad()
def clean_logits(model: LoadedModel, tokens_BL: torch.Tensor) -> torch.Tensor:
    """Logits ``[B, L, V]`` (float32) of the unedited model, through the same nnsight path as the edits."""
    return run_with_edits(model, tokens_BL, [])


@torch.no_grad()
def clean_logits_and_site(model: LoadedModel, tokens_BL: torch.Tensor, hook: HookSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """One unedited forward pass: the activations at ``hook`` ``[B, L, D]`` (model dtype) and the logits
    ``[B, L, V]`` (float32)."""
    r = read_sites(model, tokens_BL, [hook])
    return r.acts[0], r.logits
