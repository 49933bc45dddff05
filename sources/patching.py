"""Editing a site's value inside a forward pass: the one place that writes into an nnsight trace.

A site is what :meth:`LoadedModel.site` resolves a ``(layer, site)`` to: a module and whether the
value is that module's *input* (``resid_pre``: the hidden states entering block ``layer``) or its
*output* (``resid_post``, ``attn_out``, ``mlp_out``). Decoder blocks return a tensor in some
transformers versions and a tuple in others; an edit replaces the hidden states and keeps the rest.

An edit is a plain function ``edit_fn(acts_BLD) -> new_acts_BLD`` on real tensors (nnsight runs the
trace body as ordinary Python), e.g. ``lambda x: sae(x)`` (splice in an SAE reconstruction),
``torch.zeros_like`` (zero ablation) or ``lambda x: x + alpha * v`` (steering). Its result is cast
to the site's dtype and device.

- :func:`clean_logits` -- logits of an unedited forward pass.
- :func:`run_with_site_edit` -- logits with one site edited.
- :func:`run_with_edits` -- logits with several sites edited in one pass (applied in forward order).
- :func:`clean_logits_and_site` -- one clean pass: the site's activations and the logits.
- :func:`replace_site` -- the primitive, for use inside a caller's own ``model.lm.trace``.

Every function here runs under ``torch.no_grad`` and returns float32 logits ``[B, L, V]``.
"""

from __future__ import annotations

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


@torch.no_grad()
def run_with_edits(model: LoadedModel, tokens_BL: torch.Tensor,
                   edits: Sequence[tuple[HookSpec, EditFn]]) -> torch.Tensor:
    """Logits ``[B, L, V]`` (float32) of a forward pass with every ``(hook, edit_fn)`` applied.

    Edits are applied in forward order whatever order they are given in; two edits of the
    same site are applied one after the other, in the given order.
    """
    resolved = [(model.site(h.layer, h.site), fn, i, h) for i, (h, fn) in enumerate(edits)]
    resolved.sort(key=lambda r: (*_forward_key(model, r[3]), r[2]))
    # merge edits of one site into one function: a module's value is read once per trace
    merged: list[tuple[SitePath, list[EditFn]]] = []
    for where, fn, _, _ in resolved:
        if merged and merged[-1][0] == where:
            merged[-1][1].append(fn)
        else:
            merged.append((where, [fn]))
    tokens_BL = tokens_BL.to(model.device)
    with model.lm.trace(tokens_BL):
        for where, fns in merged:
            replace_site(model, where, _chain(fns))
        out = model.lm.output.save()
    return _logits_of(out)


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
    where = model.site(hook.layer, hook.site)
    envoy = model.envoy(where.module)
    with model.lm.trace(tokens_BL.to(model.device)):
        acts = (envoy.input if where.io == "input" else envoy.output).save()
        out = model.lm.output.save()
    return sites.first_tensor(acts), _logits_of(out)
