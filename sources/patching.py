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

Every function here runs under ``torch.no_grad`` and returns float32 logits ``[B, L, V]``.
"""

from __future__ import annotations

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
               start: tuple[HookSpec, torch.Tensor] | None = None) -> Reading:
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
    with model.lm.trace(tokens_BL.to(model.device)) as tracer:
        if start is not None:
            root = model.site(0, "resid_post").block.rsplit(".", 1)[0]
            last = s_hook.layer if s_hook.site == "resid_post" else s_hook.layer - 1
            x0 = s_x.to(device=model.device, dtype=model.dtype)
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
    return Reading(acts, _logits_of(out) if logits else None)


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
