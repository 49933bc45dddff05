"""Evaluating one group: arms, controls, batched forwards, per-token effects, per-document sums.

The pipeline for a group ``G`` with members ``m_1..m_k``:

1. :func:`scan_pool` reads the (cached) activation stream once for all groups: firing counts and mean
   firing activations of every latent, the mean residual, and the contexts where each group fires
   (any member active), plus the members' activations there (for the steering directions).
2. :func:`plan_arms` lists the arms of each mode: the whole group; every member (or the ``max_members`` writing
   the most norm); ``n_splits`` random splits of the members into complementary halves (the non-additivity
   test); and ``n_controls`` draws of each matched control (:data:`interventions.effects.CONTROLS` says what each
   controls for): co-firing latents (non-members firing at the group's tokens, matched member by member on firing
   there and elsewhere, :func:`subspaces.enrichment_matched_groups`), random spans of the group's dimension
   rescaled to its removed norm, random directions norm-matched to the group's edit (all three at the group's
   tokens), and random latent groups matched on size and firing frequency at their own tokens
   (:func:`subspaces.matched_groups`); and the steering arms (each direction and the random directions, at every
   alpha).
3. :func:`evaluate_group` runs clean passes and batched multi-arm passes over the group's evaluation
   contexts and reduces per-token effects to per-document sums (:mod:`interventions.effects`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from interventions import edits as E
from interventions.config import InterventionsConfig
from interventions.effects import DocSums, doc_sums, statistic
from interventions.forward import (decision_pair, evaluable_positions, first_edit, logit_diff, margin_drop,
                                   multi_arm_logits, next_token_logprobs, pad_front, token_effects)
from interventions.modes import LATENT_MODES, MODES
from sources.config import DataSpec, HookSpec, StreamSpec
from sources.corpora import Context
from sources.errors import ConfigError
from sources.models import LoadedModel
from sources.patching import Prefix, can_reuse_prefix, read_sites
from sources.progress import kill_point, progress_bar
from sources.sae_view import as_view, fires, to_csr

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupSpec:
    group_id: str
    members: tuple[int, ...]
    structure: str = ""
    probe_tasks: tuple[str, ...] = ()
    """The probe tasks for which the stage chose this group as one of the most task-enriched (``probe_groups``)."""

    @property
    def size(self) -> int:
        return len(self.members)


# ----------------------------------------------------------------------------------- pool scan

@dataclass
class Pool:
    """What one pass over the activation stream tells every group's evaluation."""

    n_tokens: int
    count_F: np.ndarray
    """Firing counts per latent (content tokens of the pool)."""
    mean_act_F: np.ndarray
    """Mean activation per latent over the tokens where it fires (0 if it never fires)."""
    mu_D: torch.Tensor
    """Mean residual at the hook over content tokens."""
    resid_norm: float
    """Mean residual norm at the hook."""
    contexts: dict[int, Context] = field(default_factory=dict)
    group_contexts: dict[str, dict[int, int]] = field(default_factory=dict)
    """group id -> {context index: position of the group's last firing token in that context}."""
    group_first: dict[str, dict[int, int]] = field(default_factory=dict)
    """group id -> {context index: position of the group's first firing token in that context} (a pool made without
    them: choose_contexts then makes no span cut)."""
    group_acts: dict[str, list[np.ndarray]] = field(default_factory=dict)
    """Members' activations [n, k] at tokens where the group fires (at most ``max_rows`` rows)."""
    group_cofire: dict[str, np.ndarray] = field(default_factory=dict)
    """group id -> firing counts [F] of every latent at the tokens where the group fires (the co-firing control's
    matching variable)."""
    sample_latents_SF: sp.csr_matrix | None = None
    """Latents of every content token of the pool (only when a mode needs ``pool_latents``: resample)."""
    sample_doc_S: np.ndarray | None = None
    """Document (corpus index) of each row of ``sample_latents_SF``."""


def fires_any(f_K: torch.Tensor, thr_K: torch.Tensor) -> torch.Tensor:
    return fires(f_K, thr_K).any(-1)


@torch.no_grad()
def scan_pool(model: LoadedModel, sae, data: DataSpec, hook: HookSpec, stream: StreamSpec, groups: list[GroupSpec],
              threshold_F: np.ndarray, pool_tokens: int, progress: bool = True, max_rows: int = 20_000,
              keep_latents: bool = False) -> Pool:
    """One pass over at most ``pool_tokens`` tokens of the activation stream (through its cache); with
    ``keep_latents`` also the latents of every pool token (what the resample mode draws from)."""
    from sources.stream import iter_activation_batches

    F = int(sae.cfg.d_sae)
    thr = torch.as_tensor(threshold_F, dtype=torch.float32)
    view = as_view(sae)
    count = torch.zeros(F, dtype=torch.float64)
    act_sum = torch.zeros(F, dtype=torch.float64)
    mu = torch.zeros(model.d_model, dtype=torch.float64)
    norm_sum, n_tok, seen = 0.0, 0, 0
    pool = Pool(0, np.zeros(F), np.zeros(F), torch.zeros(model.d_model), 0.0)
    idx = {g.group_id: torch.as_tensor(g.members, dtype=torch.long) for g in groups}
    for g in groups:
        pool.group_contexts[g.group_id] = {}
        pool.group_first[g.group_id] = {}
        pool.group_acts[g.group_id] = []
        pool.group_cofire[g.group_id] = np.zeros(F)
    rows_kept = {g.group_id: 0 for g in groups}
    sample_rows: list[sp.csr_matrix] = []
    sample_docs: list[int] = []
    for batch in iter_activation_batches(model, data, hook, stream, progress=progress):
        # whole contexts up to pool_tokens, whatever the stream's batch size: the pool does not depend on it
        keep = min(len(batch.contexts), max(1, math.ceil((pool_tokens - seen) / batch.tokens_BL.shape[1])))
        mask = batch.mask_BL[:keep]
        contexts = batch.contexts[:keep]
        b_idx, pos = mask.nonzero(as_tuple=True)
        x = batch.acts_BLD[:keep][mask.to(batch.acts_BLD.device)].float().cpu()
        f = view.encode(x).cpu()
        fire = fires(f, thr)
        if keep_latents:
            sample_rows.append(to_csr(f))
            sample_docs += [contexts[b].doc_index for b in b_idx.tolist()]
        count += fire.sum(0).double()
        act_sum += (f * fire).sum(0).double()
        mu += x.sum(0).double()
        norm_sum += float(x.norm(dim=-1).sum())
        n_tok += x.shape[0]
        for g in groups:
            gi = idx[g.group_id]
            fg = fire[:, gi].any(-1)
            if not fg.any():
                continue
            pool.group_cofire[g.group_id] += fire[fg].sum(0).double().numpy()
            last = torch.full((len(contexts),), -1, dtype=torch.long)
            last.scatter_reduce_(0, b_idx[fg], pos[fg], reduce="amax")
            first = torch.full((len(contexts),), batch.tokens_BL.shape[1], dtype=torch.long)
            first.scatter_reduce_(0, b_idx[fg], pos[fg], reduce="amin")
            for b in torch.nonzero(last >= 0).flatten().tolist():
                ctx = contexts[b]
                pool.contexts[ctx.index] = ctx
                pool.group_contexts[g.group_id][ctx.index] = int(last[b])
                pool.group_first[g.group_id][ctx.index] = int(first[b])
            room = max_rows - rows_kept[g.group_id]
            if room > 0:
                acts = f[fg][:, gi][:room].numpy()
                pool.group_acts[g.group_id].append(acts)
                rows_kept[g.group_id] += acts.shape[0]
        seen += keep * batch.tokens_BL.shape[1]
        if seen >= pool_tokens:
            break
    pool.n_tokens = n_tok
    pool.count_F = count.numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        pool.mean_act_F = np.where(count.numpy() > 0, act_sum.numpy() / count.numpy(), 0.0)
    pool.mu_D = (mu / max(n_tok, 1)).float()
    pool.resid_norm = norm_sum / max(n_tok, 1)
    if keep_latents:
        pool.sample_latents_SF = sp.vstack(sample_rows).tocsr() if sample_rows else sp.csr_matrix((0, F), dtype=np.float32)
        pool.sample_doc_S = np.array(sample_docs, dtype=np.int64)
    return pool


# ----------------------------------------------------------------------------------- arms

@dataclass
class Arm:
    name: str
    """group | member:<latent> | half:<s>a / half:<s>b | cofiring:<r> | random_span:<r> | random_direction:<r> |
    random_group:<r> | steer:<direction> | steer:random:<r>"""
    kind: str
    """group, member, half, cofiring, random_span, random_direction, random_group, steer, steer_random"""
    mode: str
    """An ablation mode, or steer."""
    latents: tuple[int, ...] = ()
    alpha: float | None = None
    """Steering coefficient in the configured units (None for ablations)."""
    scale: float = 1.0
    """Residual-norm size of one alpha unit."""
    vector: torch.Tensor | None = None
    basis: torch.Tensor | None = None
    seed: int | None = None
    """Seed of the arm's own random draws (the resample mode's source tokens)."""

    @property
    def own_target(self) -> bool:
        """Random latent groups act (and are scored) where they themselves fire; every other arm at the group's tokens."""
        return self.kind == "random_group"


@dataclass
class Plan:
    group: GroupSpec
    arms: list[Arm]
    tested_members: tuple[int, ...]
    random_groups: list[tuple[int, ...]]
    steer_directions: dict[str, torch.Tensor]
    group_norm: float
    control_bins: int = 10
    """Firing-frequency bins the random control groups were matched on."""
    cofiring_groups: list[tuple[int, ...]] = field(default_factory=list)
    """The co-firing control draws (non-members firing at the group's tokens)."""
    halves: list[tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    """Random splits of the members into complementary halves."""
    n_draws: int = 0
    """Draws of each matched control (random spans and directions included)."""


def _unit(v: torch.Tensor) -> torch.Tensor:
    n = v.norm()
    return v / n if n > 0 else v


def steering_directions(group: GroupSpec, pool: Pool, W_eff: torch.Tensor, which: list[str]) -> tuple[dict[str, torch.Tensor], float]:
    """Unit steering directions of a group and its mean reconstruction norm at its firing tokens."""
    from subspaces import reconstruction_pca

    members = list(group.members)
    Wg = W_eff[members].cpu()
    acts = np.concatenate(pool.group_acts[group.group_id]) if pool.group_acts[group.group_id] else np.zeros((0, len(members)))
    recon = torch.from_numpy(acts).float() @ Wg
    group_norm = float(recon.norm(dim=-1).mean()) if len(recon) else float(Wg.norm(dim=-1).mean())
    weights = torch.as_tensor(pool.mean_act_F[members], dtype=torch.float32)
    written = weights * Wg.norm(dim=-1)
    out = {}
    for d in which:
        if d == "pc1":
            if acts.shape[0] >= 2:
                try:
                    res = reconstruction_pca(acts, Wg.numpy(), list(range(len(members))), n_components=1)
                    out[d] = torch.from_numpy(res.subspace.basis_DK[:, 0]).float()
                    continue
                except ValueError:
                    pass
            log.info("group %s: too few firing tokens for pc1; using decoder_mean", group.group_id)
            out[d] = _unit((weights[:, None] * Wg).sum(0))
        elif d == "decoder_mean":
            out[d] = _unit((weights[:, None] * Wg).sum(0))
        elif d == "decoder_top":
            out[d] = _unit(Wg[int(written.argmax())])
    return out, group_norm


def cofiring_groups(group: GroupSpec, pool: Pool, n: int, rng: np.random.Generator, linked=None) -> list[tuple[int, ...]]:
    """``n`` draws of the co-firing control: for each member, a non-member that fires at the group's tokens, among the
    20 such latents nearest to it in (log firings at the group's tokens, log firings elsewhere in the pool), no two
    drawn latents (nor a drawn latent and a member) ``linked`` by co-occurrence
    (:func:`subspaces.enrichment_matched_groups`). Such latents fire where the group fires, about as often as its
    members do, without forming a group with them."""
    from subspaces import enrichment_matched_groups

    at = pool.group_cofire.get(group.group_id)
    if at is None:
        at = np.zeros_like(pool.count_F)
    other = np.clip(pool.count_F - at, 0, None)
    return [tuple(c.latents) for c in enrichment_matched_groups(group.members, at, other, n, seed=rng, linked=linked,
                                                                 eligible_F=at > 0)]


def member_halves(members: tuple[int, ...], n: int, rng: np.random.Generator) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``n`` random splits of ``members`` into complementary halves (sizes floor(k/2) and ceil(k/2))."""
    if len(members) < 2:
        return []
    out = []
    for _ in range(n):
        perm = rng.permutation(len(members))
        h = len(members) // 2
        out.append((tuple(int(members[i]) for i in sorted(perm[:h])), tuple(int(members[i]) for i in sorted(perm[h:]))))
    return out


def plan_arms(group: GroupSpec, pool: Pool, W_eff: torch.Tensor, occ_F: np.ndarray, icfg: InterventionsConfig,
              rng: np.random.Generator, arm_seed: int | None = None, linked=None) -> Plan:
    """Every arm of the group's comparisons (see the module docstring); ``arm_seed`` seeds the arms' own draws;
    ``linked``: latent pairs that co-occur (``CoocResult.linked_pairs``), never both in a co-firing control."""
    from subspaces import Subspace, matched_groups

    members = list(group.members)
    written = pool.mean_act_F[members] * pool.count_F[members] * W_eff[members].norm(dim=-1).cpu().numpy()
    order = np.argsort(-written, kind="stable")
    tested = tuple(int(members[i]) for i in order[: icfg.max_members or len(members)])
    controls, n_bins = None, 0
    for n_bins in (10, 5, 3, 2, 1):  # as fine a frequency match as the SAE's width allows
        try:
            controls = matched_groups(members, occ_F, icfg.n_controls, n_bins=n_bins, seed=rng)
            break
        except ValueError:
            continue
    if controls is None:
        raise ConfigError("interventions", f"group {group.group_id} has {len(members)} latents; the SAE has too few other "
                                           "latents to draw random control groups of that size")
    if n_bins < 10:
        log.info("group %s: control groups matched on %d firing-frequency bins (too few latents for 10)", group.group_id, n_bins)
    random_groups = [tuple(c.latents) for c in controls]
    d_model = W_eff.shape[1]
    directions = [E.random_unit_vector(d_model, rng) for _ in range(icfg.n_controls)]
    try:
        cofiring = cofiring_groups(group, pool, icfg.n_controls, rng, linked)
    except ValueError as exc:
        log.warning("group %s: no co-firing control (%s)", group.group_id, exc)
        cofiring = []
    halves = member_halves(group.members, icfg.n_splits, rng)
    dim = min(len(members), d_model)
    spans = [torch.from_numpy(Subspace.random(d_model, dim, rng).basis_DK).float().to(W_eff.device)
             for _ in range(icfg.n_controls)]

    arms: list[Arm] = []
    for mode in icfg.modes:
        sub = MODES[mode].edits == "subspace"

        def basis(lat):
            return E.decoder_basis(W_eff, lat) if sub else None

        arms.append(Arm("group", "group", mode, tuple(members), basis=basis(members), seed=arm_seed))
        arms += [Arm(f"member:{m}", "member", mode, (m,), basis=basis([m]), seed=arm_seed) for m in tested]
        for s_, (a, b) in enumerate(halves if not sub else []):  # non-additivity: latent modes only (edits add)
            arms += [Arm(f"half:{s_}a", "half", mode, a, basis=basis(a), seed=arm_seed),
                     Arm(f"half:{s_}b", "half", mode, b, basis=basis(b), seed=arm_seed)]
        arms += [Arm(f"cofiring:{r}", "cofiring", mode, cg, basis=basis(cg), seed=arm_seed) for r, cg in enumerate(cofiring)]
        arms += [Arm(f"random_span:{r}", "random_span", mode, tuple(members), basis=B, seed=arm_seed)
                 for r, B in enumerate(spans)]
        arms += [Arm(f"random_direction:{r}", "random_direction", mode, tuple(members), vector=u, seed=arm_seed)
                 for r, u in enumerate(directions)]
        arms += [Arm(f"random_group:{r}", "random_group", mode, rg, basis=basis(rg), seed=arm_seed)
                 for r, rg in enumerate(random_groups)]
    steer_dirs, group_norm = {}, 0.0
    st = icfg.steering
    if st.enabled:
        steer_dirs, group_norm = steering_directions(group, pool, W_eff, st.directions)
        unit = {"group_norm": group_norm, "resid_norm": pool.resid_norm, "absolute": 1.0}[st.units]
        rand = [E.random_unit_vector(d_model, rng) for _ in range(st.n_random)]
        for a in st.alphas:
            arms += [Arm(f"steer:{d}", "steer", "steer", tuple(members), alpha=a, scale=unit, vector=v)
                     for d, v in steer_dirs.items()]
            arms += [Arm(f"steer:random:{r}", "steer_random", "steer", (), alpha=a, scale=unit, vector=u)
                     for r, u in enumerate(rand)]
    return Plan(group, arms, tested, random_groups, steer_dirs, group_norm, n_bins, cofiring, halves, icfg.n_controls)


# ----------------------------------------------------------------------------------- evaluation

@dataclass
class Chunk:
    """Clean state of a batch of evaluation contexts."""

    tokens: torch.Tensor
    x: torch.Tensor
    f: torch.Tensor
    content: torch.Tensor
    group_fires: torch.Tensor
    clean_lp: torch.Tensor
    clean_read: torch.Tensor | None
    docs: np.ndarray
    cache: dict = field(default_factory=dict)
    clean_pair: tuple | None = None
    """The clean model's top-1/top-2 next tokens and margin (forward.decision_pair)."""
    clean_ld: dict = field(default_factory=dict)
    """name -> the clean targeted logit difference [B, L] (interventions.logit_diffs)."""
    doc_index: list | None = None
    """Document (corpus index) of each row: the resample mode draws from other documents."""
    row_keys: list | None = None
    """A key per row naming its context (the resample mode seeds one generator per context, so its draws do not
    depend on how contexts and arms are batched)."""
    extra: dict = field(default_factory=dict)
    """What the pass that built the chunk keeps beside it (scored positions, task-token rows, ...)."""
    kv: object | None = None
    """The clean pass's key-value cache (``interventions.reuse_prefix``): arms compute only the positions from their
    first edit on (:class:`sources.patching.Prefix`)."""


class Evaluator:
    """Arms' deltas on a chunk and the per-token records of their effects."""

    def __init__(self, model: LoadedModel, sae, hook: HookSpec, pool: Pool, threshold_F: np.ndarray,
                 icfg: InterventionsConfig):
        self.model, self.hook, self.pool, self.icfg = model, hook, pool, icfg
        self.sae = as_view(sae)
        self.W = self.sae.decoder_FD().to(model.device)
        self.thr = torch.as_tensor(threshold_F, dtype=torch.float32, device=model.device)
        self.mean_act = torch.as_tensor(pool.mean_act_F, dtype=torch.float32, device=model.device)
        self.reuse_prefix = icfg.reuse_prefix and can_reuse_prefix(model)
        """Whether arms take the positions before their first edit from the clean pass (interventions.reuse_prefix)."""
        self.logit_ids: dict[str, tuple[list[int], list[int]]] = {}
        """name -> (target ids, foil ids) of the targeted logit differences (set by run_interventions)."""

    # -- clean pass
    @torch.no_grad()
    def clean_chunk(self, contexts: list[Context], docs: np.ndarray, members: tuple[int, ...],
                    lengths: list[int] | None = None) -> Chunk:
        """Clean pass over contexts cut to ``lengths`` (padded to the longest; the padding is masked)."""
        L = max(lengths) if lengths else len(contexts[0].tokens_L)
        tokens = torch.from_numpy(np.stack([c.tokens_L[:L] for c in contexts]))
        content = torch.from_numpy(np.stack([c.mask_L[:L] for c in contexts]))
        if lengths:
            content &= torch.arange(L)[None, :] < torch.as_tensor(lengths)[:, None]
        content = content.to(self.model.device)
        x, logits, read, kv = clean_pass(self.model, self.hook, tokens, self.icfg.read_layer, keep_cache=self.reuse_prefix)
        x = x.float()
        f = self.sae.encode(x)
        gi = torch.as_tensor(members, device=f.device)
        gf = fires_any(f[..., gi], self.thr[gi]) & content
        ld = {n: logit_diff(logits, t, fo) for n, (t, fo) in self.logit_ids.items()}
        return Chunk(tokens, x, f, content, gf, next_token_logprobs(logits), read, docs, clean_pair=decision_pair(logits),
                     clean_ld=ld, doc_index=[c.doc_index for c in contexts], row_keys=[("context", c.index) for c in contexts],
                     kv=kv)

    def target(self, arm: Arm, ch: Chunk) -> torch.Tensor:
        if arm.own_target:
            gi = torch.as_tensor(arm.latents, device=ch.f.device)
            return fires_any(ch.f[..., gi], self.thr[gi]) & ch.content
        return ch.group_fires

    def edit_positions(self, arm: Arm, ch: Chunk) -> torch.Tensor:
        """Where the arm edits: steering at the positions ``steering.positions`` names, every other arm at its targets."""
        if arm.kind in ("steer", "steer_random"):
            return ch.content if self.icfg.steering.positions == "all" else ch.group_fires
        return self.target(arm, ch)

    def collateral(self, arm: Arm, ch: Chunk, delta: torch.Tensor) -> torch.Tensor:
        """The arm's collateral tokens (scope ``other``; :func:`collateral_mask`): its edit positions, and wherever its
        delta is non-zero, count as edited (an exactly-zero edit keeps its positions)."""
        return collateral_mask(self.edit_positions(arm, ch) | (delta.norm(dim=-1) > 0))

    def delta(self, arm: Arm, ch: Chunk) -> torch.Tensor:
        key = (arm.name, arm.mode, arm.alpha)
        if key in ch.cache:
            return ch.cache[key]
        pos = self.target(arm, ch)
        if arm.kind in ("random_direction", "random_span"):
            ref = self.delta(Arm("group", "group", arm.mode, arm.latents, basis=self._group_basis(arm, ch), seed=arm.seed), ch)
            d = (E.norm_matched_delta(ref, arm.vector) if arm.kind == "random_direction"
                 else E.norm_matched_span_delta(ref, ch.x, arm.basis))
        elif arm.kind in ("steer", "steer_random"):
            d = E.steer_delta(ch.x, arm.vector, arm.alpha * arm.scale, self.edit_positions(arm, ch))
        else:  # an ablation: its mode's entry of the table says how
            d = MODES[arm.mode].delta(self, arm, ch, pos)
        ch.cache[key] = d
        return d

    def _group_basis(self, arm: Arm, ch: Chunk):
        if arm.mode in LATENT_MODES:
            return None
        key = ("basis", arm.latents)
        if key not in ch.cache:
            ch.cache[key] = E.decoder_basis(self.W, arm.latents)
        return ch.cache[key]


@torch.no_grad()
def clean_pass(model: LoadedModel, hook: HookSpec, tokens_BL: torch.Tensor, read_layer: int | None = None,
               keep_cache: bool = False):
    """One unedited pass: activations at the hook [B, L, D], logits [B, L, V] (float32), with ``read_layer`` the
    residual (resid_post) there [B, L, D] (float32), else None, and with ``keep_cache`` the pass's key-value cache
    (the arms' :class:`sources.patching.Prefix`), else None."""
    reads = [hook] if read_layer is None else [hook, HookSpec(layer=read_layer, site="resid_post")]
    r = read_sites(model, tokens_BL, reads, keep_cache=keep_cache)
    return r.acts[0], r.logits, (r.acts[1].float() if read_layer is not None else None), r.cache


@dataclass
class Records:
    """Per-token records of one arm over all chunks (scored tokens only)."""

    doc: list = field(default_factory=list)
    target: list = field(default_factory=list)
    ce: list = field(default_factory=list)
    kl: list = field(default_factory=list)
    margin: list = field(default_factory=list)
    logit_diffs: dict = field(default_factory=dict)
    """name -> per-token drops of the targeted logit difference."""
    norm: list = field(default_factory=list)
    read: list = field(default_factory=list)
    collateral: list = field(default_factory=list)
    """Per token: part of the ``other`` scope (not edited, at or after its context's first edited position)."""

    def sums(self, n_docs: int) -> DocSums:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
        eff = {"ce": cat(self.ce), "kl": cat(self.kl)}
        if self.margin:
            eff["margin"] = cat(self.margin)
        for name, vals in self.logit_diffs.items():
            eff[f"logit_diff:{name}"] = cat(vals)
        if self.read:
            eff["read"] = cat(self.read)
        other = cat(self.collateral).astype(bool) if self.collateral else None
        return doc_sums(cat(self.doc).astype(np.int64), n_docs, cat(self.target).astype(bool), eff, cat(self.norm), other)


@dataclass
class GroupEval:
    plan: Plan
    n_docs: int
    doc_ids: list[str]
    sums: dict[tuple[str, str, float | None], DocSums]
    """(arm name, mode, alpha) -> per-document sums."""
    n_tokens_fires: int
    n_contexts: int
    context_ids: list[int] = field(default_factory=list)
    """Stream indices (Context.index) of the evaluation contexts."""
    context_lengths: list[int] = field(default_factory=list)
    """Tokens of each evaluation context that were evaluated (the rest was cut, see choose_contexts)."""
    tasks: list = field(default_factory=list)
    """Task evaluations of the group (:class:`interventions.tasks.TaskEval`), one per probe task family it fires on."""


def collateral_mask(edited_BL: torch.Tensor) -> torch.Tensor:
    """Positions that count as collateral (scope ``other``) for an edit at ``edited_BL``: not edited themselves, and
    at or after their context's first edited position. Earlier positions cannot change in a causal model (counting
    them would dilute the collateral effect, by a different amount for each arm), and edited positions are the
    edit's own (with steering at every position nothing is collateral, and the scope is empty)."""
    L = edited_BL.shape[-1]
    pos = torch.arange(L, device=edited_BL.device)
    first = torch.where(edited_BL.any(-1), edited_BL.float().argmax(-1), torch.full(edited_BL.shape[:-1], L, device=edited_BL.device))
    return (pos >= first.unsqueeze(-1)) & ~edited_BL


def documents_first(ids: np.ndarray, doc_of, rng: np.random.Generator) -> np.ndarray:
    """``ids`` in a seeded random order that takes one item per document first, then second items of
    documents, and so on (``doc_of(id)`` names an item's document): a prefix of it spans as many documents
    as it can, and documents are the unit of the statistics."""
    ids = ids[rng.permutation(len(ids))]
    rank, seen = [], {}
    for i in ids.tolist():
        d = doc_of(i)
        rank.append(seen.get(d, 0))
        seen[d] = seen.get(d, 0) + 1
    return ids[np.argsort(np.array(rank), kind="stable")]


def choose_contexts(pool: Pool, group: GroupSpec, max_tokens: int, tail_tokens: int | None,
                    rng: np.random.Generator, max_doc_tokens: int | None = None,
                    span_tokens: int | None = None) -> list[tuple[Context, int]]:
    """A seeded sample of the pool's contexts in which the group fires: ``(context, length)`` pairs whose evaluated
    positions sum to about ``max_tokens``.

    Documents are the unit of the statistics, so contexts are drawn one per document first (in random
    order), then second contexts of documents, and so on. Each context is cut ``tail_tokens`` tokens after
    the group's last firing token (None: kept whole): later tokens cannot change what happens at the group's
    tokens and only add tokens to the collateral (``other``) scope; and at most ``span_tokens`` tokens after its
    first firing token (None: no such cut), so that a context where the group fires early and again late costs no
    more than one where it fires once. A context's cost is its **evaluated positions**, from the group's first
    firing token to the cut: the positions before it are the clean pass's in every arm at the group's tokens
    (``interventions.reuse_prefix``). ``max_tokens`` caps their sum and ``max_doc_tokens`` one document's share
    (its further contexts are skipped), so no document dominates a group's evaluation.
    """
    last = pool.group_contexts.get(group.group_id, {})
    if not last:
        return []
    first_of = pool.group_first.get(group.group_id, {})
    order = documents_first(np.array(sorted(last)), lambda i: pool.contexts[i].doc_index, rng)
    chosen, total, per_doc = [], 0, {}
    for i in order.tolist():
        ctx = pool.contexts[i]
        known = i in first_of  # a pool without first firing positions (made before them): no span cut, cost from 0
        first = min(first_of[i], last[i]) if known else 0
        n = len(ctx.tokens_L) if tail_tokens is None else min(len(ctx.tokens_L), last[i] + 1 + tail_tokens)
        if span_tokens is not None and known:
            n = min(n, first + span_tokens)
        cost = n - first
        if max_doc_tokens is not None and per_doc.get(ctx.doc_index, 0) > 0 and per_doc[ctx.doc_index] + cost > max_doc_tokens:
            continue
        per_doc[ctx.doc_index] = per_doc.get(ctx.doc_index, 0) + cost
        chosen.append((ctx, n, first))
        total += cost
        if total >= max_tokens:
            break
    # contexts whose first firing tokens are close share a chunk, so a chunk's arms start near all of them
    return [(c, n) for c, n, _ in sorted(chosen, key=lambda cnf: (cnf[2], cnf[1], cnf[0].index))]


def arm_batching(n_arms: int, n_items: int, batch_size: int) -> tuple[int, int]:
    """``(arms per forward, contexts per chunk)``: fill the batch with arms first, then with contexts."""
    per_fwd = max(1, min(n_arms, batch_size))
    return per_fwd, max(1, min(n_items, batch_size // per_fwd))


def run_arms(chunks, arms: list[Arm], ev: "Evaluator", forward, record, bar, kill_name: str | None = None) -> None:
    """The multi-arm loop shared by model effects (:func:`evaluate_group`) and task effects
    (:func:`interventions.tasks.evaluate_task`): for every clean :class:`Chunk`, the arms in slices of
    ``ev.icfg.batch_size`` (:func:`arm_batching`), each slice's deltas in one ``forward(ch, deltas)`` pass, and
    ``record(ch, i, arm, delta, out)`` per arm of the slice. An arm whose delta is exactly zero on the whole chunk
    (a latent that never fires there, alpha 0) is not run: it changes nothing, so ``record`` gets ``out=None`` and
    records exact zeros. With a clean key-value cache on the chunk (``ev.reuse_prefix``) the live arms are sliced in
    order of their first edited position, so that a slice's forward can start at its first arm's (each arm's own
    records keep their chunk order). ``chunks`` yields the chunks (built lazily, one clean pass each); their delta
    caches are cleared once all arms have run. ``bar`` counts arm-chunks."""
    per_fwd, _ = arm_batching(len(arms), 1, ev.icfg.batch_size)
    for ch in chunks:
        live = []
        for a in arms:
            d = ev.delta(a, ch)
            if bool(d.any()):
                live.append(a)
            else:
                record(ch, None, a, d, None)
        bar.update(len(arms) - len(live))
        if ch.kv is not None:
            live.sort(key=lambda a: first_edit([ev.delta(a, ch)]))
        for a0 in range(0, len(live), per_fwd):
            sub = live[a0:a0 + per_fwd]
            deltas = [ev.delta(a, ch) for a in sub]
            out = forward(ch, deltas)
            for i, (arm, d) in enumerate(zip(sub, deltas)):
                record(ch, i, arm, d, out)
            bar.update(len(sub))
            if kill_name is not None:
                kill_point(kill_name)
        ch.cache.clear()


def suffix_edits(ch: Chunk, deltas: list[torch.Tensor]):
    """``(p, edit functions, prefix)`` of one forward of ``deltas`` on ``ch``: with a clean cache on the chunk,
    ``p`` is the arms' first edited position and the edits add the deltas from there on over the clean prefix
    (:class:`sources.patching.Prefix`, None when ``p`` is 0); without one, ``p`` is 0 and the edits cover every
    position."""
    p = first_edit(deltas) if ch.kv is not None else 0
    fns = [(lambda x, d=d[:, p:]: x + d.to(x.dtype)) for d in deltas]
    return p, fns, (Prefix(ch.kv, p) if p > 0 else None)


@torch.no_grad()
def arm_effects(ev: Evaluator, ch: Chunk, deltas: list[torch.Tensor], start_at_hook: bool = True) -> dict:
    """One forward pass of ``len(deltas)`` arms on chunk ``ch`` (each adds its delta at the hook) and their per-token
    effects ``[A, B, L]``: dce, kl, margin, ld (name -> drop of each targeted logit difference) and read (the
    residual at the read layer ``[A, B, L, D]``, or None). ``start_at_hook``: skip the blocks before the hook; a
    chunk with a clean cache (``ch.kv``) computes only the positions from the arms' first edit on (the effects
    before it are exactly 0 and the read is the clean one)."""
    p, fns, prefix = suffix_edits(ch, deltas)
    logits, read = multi_arm_logits(ev.model, ev.hook, ch.tokens, fns, ev.icfg.read_layer,
                                    x_BLD=ch.x if start_at_hook else None, prefix=prefix)
    dce_A, kl_A = token_effects(ch.clean_lp[:, p:], logits, ch.tokens[:, p:])
    top, m_c = ch.clean_pair
    return {"dce": pad_front(dce_A, p, -1), "kl": pad_front(kl_A, p, -1),
            "margin": pad_front(margin_drop((top[:, p:], m_c[:, p:]), logits), p, -1),
            "read": None if read is None else pad_front(read, p, -2, fill=ch.clean_read),
            "ld": {n: pad_front(ch.clean_ld[n][:, p:] - logit_diff(logits, t, fo), p, -1)
                   for n, (t, fo) in ev.logit_ids.items()}}


@torch.no_grad()
def evaluate_group(model: LoadedModel, sae, hook: HookSpec, plan: Plan, contexts: list[Context], ev: Evaluator,
                   progress: bool = True, kill_name: str | None = None) -> GroupEval:
    """Run every arm of ``plan`` on ``contexts`` (batched) and reduce to per-document sums.

    ``kill_name``: a second test-hook name counted at every forward pass besides the bar's own
    (sources.progress.kill_point; the pipeline passes ``group <k> forward`` for the k-th group)."""
    icfg = ev.icfg
    lengths = [n for _, n in contexts]
    contexts = [c for c, _ in contexts]
    doc_keys = sorted({c.doc_index for c in contexts})
    doc_of = {d: i for i, d in enumerate(doc_keys)}
    doc_ids = {c.doc_index: c.doc_id for c in contexts}
    n_docs = len(doc_keys)
    arms = plan.arms
    records = {(a.name, a.mode, a.alpha): Records() for a in arms}
    per_fwd, cb = arm_batching(len(arms), len(contexts), icfg.batch_size)
    bar = progress_bar(total=math.ceil(len(contexts) / cb) * len(arms), desc=f"interventions {plan.group.group_id}",
                       unit="arm", progress=progress, mininterval=2.0)
    n_fires = 0

    def chunks():
        nonlocal n_fires
        for c0 in range(0, len(contexts), cb):
            ctxs = contexts[c0:c0 + cb]
            docs = np.array([doc_of[c.doc_index] for c in ctxs])
            ch = ev.clean_chunk(ctxs, docs, plan.group.members, lengths[c0:c0 + cb])
            scored = evaluable_positions(ch.content)
            n_fires += int((scored & ch.group_fires).sum())
            ch.extra["at"] = scored.nonzero(as_tuple=True)
            ch.extra["doc_T"] = docs[ch.extra["at"][0].cpu().numpy()]
            yield ch

    def forward(ch, deltas):
        return arm_effects(ev, ch, deltas, icfg.start_at_hook)

    def record(ch, i, arm, d, out):
        b_idx, t_idx = ch.extra["at"]
        rec = records[(arm.name, arm.mode, arm.alpha)]
        rec.doc.append(ch.extra["doc_T"])
        rec.target.append(ev.target(arm, ch)[b_idx, t_idx].cpu().numpy())
        rec.norm.append(d.norm(dim=-1)[b_idx, t_idx].cpu().numpy())
        rec.collateral.append(ev.collateral(arm, ch, d)[b_idx, t_idx].cpu().numpy())
        if out is None:  # the arm changes nothing on this chunk: every effect is exactly 0
            zero = np.zeros(len(b_idx))
            for lst in (rec.ce, rec.kl, rec.margin):
                lst.append(zero)
            for n in ev.logit_ids:
                rec.logit_diffs.setdefault(n, []).append(zero)
            if icfg.read_layer is not None:
                rec.read.append(zero)
            return
        rec.ce.append(out["dce"][i][b_idx, t_idx].cpu().numpy())
        rec.kl.append(out["kl"][i][b_idx, t_idx].cpu().numpy())
        rec.margin.append(out["margin"][i][b_idx, t_idx].cpu().numpy())
        for n, v in out["ld"].items():
            rec.logit_diffs.setdefault(n, []).append(v[i][b_idx, t_idx].cpu().numpy())
        read = out["read"]
        if read is not None:
            change = (read[i] - ch.clean_read).norm(dim=-1) / ch.clean_read.norm(dim=-1).clamp_min(1e-12)
            rec.read.append(change[b_idx, t_idx].cpu().numpy())

    run_arms(chunks(), arms, ev, forward, record, bar, kill_name)
    bar.close()
    sums = {k: r.sums(n_docs) for k, r in records.items()}
    return GroupEval(plan, n_docs, [doc_ids[d] for d in doc_keys], sums, n_fires, len(contexts),
                     [c.index for c in contexts], lengths)


# ----------------------------------------------------------------------------------- derived arms

def pooled(sums: dict, names: list[str], mode: str, alpha=None) -> DocSums | None:
    parts = [sums[(n, mode, alpha)] for n in names if (n, mode, alpha) in sums]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


def document_halves(n_docs: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded random split of ``n_docs`` documents in two halves (bool [n_docs], True: the first half)."""
    fold = np.zeros(n_docs, dtype=bool)
    fold[rng.permutation(n_docs)[: n_docs // 2]] = True
    return fold


def best_single(sums: dict, members: tuple[int, ...], mode: str, effect: str, n_docs: int,
                rng: np.random.Generator | None = None, fold: np.ndarray | list | None = None) -> tuple[DocSums | None, str]:
    """Cross-fitted best single member: documents are split in two halves (``fold``, or :func:`document_halves` drawn
    from ``rng``); on each half the arm is the member whose effect (``effect`` at the group's tokens) is largest on
    the *other* half, so the choice never sees the documents it is scored on. Every member in ``sums`` is a
    candidate, and the choice is made per effect (the caller passes one ``effect`` at a time and the same folds).
    ``fold`` may be a list of splits: the cross-fitted sums are then averaged over them, so the result does not hang
    on one random split. A half with no scored token on the other half is left out of that split (the choice would
    see its own documents). Returns the combined sums and the chosen members (most often chosen first, with how often,
    e.g. ``12 (7/10)``)."""
    cand = [(m, sums[(f"member:{m}", mode, None)]) for m in members if (f"member:{m}", mode, None) in sums]
    if not cand:
        return None, ""
    folds = [document_halves(n_docs, rng)] if fold is None else (list(fold) if isinstance(fold, list) else [fold])
    chosen: list[int] = []
    total, used = None, 0
    for f in folds:
        out, ok = None, True
        for half in (f, ~f):
            other = (~half).astype(float)[None, :]
            vals = np.array([statistic(s, effect, "fires", other)[0] for _, s in cand])
            if not np.isfinite(vals).any():  # the other half has no scored token: this split cannot cross-fit
                ok = False
                break
            k = int(np.nanargmax(np.where(np.isfinite(vals), vals, -np.inf)))
            chosen.append(cand[k][0])
            part = cand[k][1].subset(half)
            out = part if out is None else out + part
        if ok:  # a running mean over the splits: splits that give the same sums leave it exactly unchanged
            used += 1
            total = out if total is None else total + (out.scaled(1.0 / used) + total.scaled(-1.0 / used))
    if total is None:
        return None, ""
    counts = {m: chosen.count(m) for m in dict.fromkeys(chosen)}
    top = sorted(counts, key=lambda m: -counts[m])[:2]
    label = "|".join(f"{m} ({counts[m]}/{len(chosen)})" if len(chosen) > 2 else str(m) for m in top)
    return total, label
