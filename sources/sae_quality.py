"""How good an SAE is at a model's hook: reconstruction, sparsity, dead latents, and the next-token
loss when the model runs on the SAE's reconstruction.

All metrics are over the *unmasked* positions of the evaluation contexts (document content; BOS, PAD
and EOS are never counted, as everywhere in the framework):

- ``explained_variance`` = 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖², pooled over tokens (mean over the
  evaluation tokens, not a mean of per-token ratios);
- ``l0``: mean number of nonzero latents per token;
- ``dead_fraction``: fraction of latents that never fire on any evaluation token;
- ``ce_clean`` / ``ce_spliced`` / ``ce_zero_ablation``: mean next-token cross-entropy (nats) over the
  targets whose position is unmasked, for the clean model, for the model with the site replaced by
  the SAE reconstruction, and with the site replaced by zeros. Both edits apply at unmasked
  positions only: BOS/PAD keep their clean value (the SAE is never trained on them, and a BOS
  attention sink replaced by an out-of-distribution vector would measure that, not the SAE);
- ``ce_loss_recovered`` = (ce_zero − ce_spliced) / (ce_zero − ce_clean): 1 is a perfect SAE, 0 is no
  better than zero ablation.

Use held-out documents (:func:`heldout_data`) so the figures are not measured on training text.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sources.config import DataSpec, HookSpec, StreamSpec
from sources.corpora import iter_contexts
from sources.models import LoadedModel
from sources.patching import clean_logits_and_site, run_with_site_edit
from sources.progress import progress_bar
from sources.sae_view import as_view
from sources.stream import batched

DEFAULT_HOLDOUT_EVERY = 10
"""When the data spec holds nothing out, every 10th document is the evaluation split."""


@dataclass
class SAEQuality:
    explained_variance: float
    l0: float
    dead_fraction: float
    ce_clean: float
    ce_spliced: float
    ce_zero_ablation: float
    ce_loss_recovered: float
    n_tokens: int
    """Unmasked positions the reconstruction metrics were measured on."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEQuality":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})

    def table(self) -> str:
        """A two-column plain-text table for the terminal."""
        rows = [
            ("explained variance", f"{self.explained_variance:.4f}"),
            ("L0 (active latents / token)", f"{self.l0:.2f}"),
            ("dead latents (fraction)", f"{self.dead_fraction:.4f}"),
            ("CE clean (nats)", f"{self.ce_clean:.4f}"),
            ("CE spliced (nats)", f"{self.ce_spliced:.4f}"),
            ("CE zero ablation (nats)", f"{self.ce_zero_ablation:.4f}"),
            ("CE loss recovered", f"{self.ce_loss_recovered:.4f}"),
            ("evaluation tokens", f"{self.n_tokens}"),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def heldout_data(data: DataSpec, max_tokens: int | None = None) -> DataSpec:
    """The evaluation split of ``data``: only its held-out documents (every ``holdout_every``-th)."""
    every = data.holdout_every or DEFAULT_HOLDOUT_EVERY
    update = {"holdout_every": every, "holdout_only": True}
    if max_tokens is not None:
        update["max_tokens"] = max_tokens
    return data.model_copy(update=update)


def training_data(data: DataSpec) -> DataSpec:
    """The training split of ``data``: every document except the held-out ones."""
    every = data.holdout_every or DEFAULT_HOLDOUT_EVERY
    return data.model_copy(update={"holdout_every": every, "holdout_only": False})


def next_token_ce_sum(logits_BLV: torch.Tensor, tokens_BL: torch.Tensor, mask_BL: torch.Tensor) -> tuple[float, int]:
    """Summed next-token cross-entropy (nats) over targets at unmasked positions, and their count."""
    logits = logits_BLV[:, :-1].float()
    targets = tokens_BL[:, 1:].to(logits.device)
    keep = mask_BL[:, 1:].to(logits.device)
    if not bool(keep.any()):
        return 0.0, 0
    ce = F.cross_entropy(logits[keep], targets[keep], reduction="sum")
    return float(ce), int(keep.sum())


def _sae_apply(sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(latents, reconstruction) in float32 for activations x [..., d_in]."""
    view = as_view(sae)
    feats = view.encode(x)
    return feats, view.decode(feats)


@torch.no_grad()
def evaluate_sae(sae, model: LoadedModel, hook: HookSpec, data: DataSpec, stream: StreamSpec,
                 progress: bool = True) -> SAEQuality:
    """Measure ``sae`` at ``hook`` of ``model`` on the contexts of ``data`` (pass a held-out split,
    e.g. :func:`heldout_data`). Each batch costs three full forward passes: clean (which also reads
    the site), spliced and zero-ablated."""
    model.site(hook.layer, hook.site)  # a bad hook is a ConfigError before any work
    was_training = sae.training
    sae.eval()
    d_sae = int(sae.cfg.d_sae)
    fired_F = torch.zeros(d_sae, dtype=torch.bool)
    n = 0
    sum_x = None
    sum_sq = 0.0
    sum_err = 0.0
    sum_l0 = 0.0
    ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_targets = 0
    bar = progress_bar(total=data.max_tokens, unit="tok", desc="evaluate SAE", progress=progress and stream.progress,
                       mininterval=2.0)
    for contexts in batched(iter_contexts(data, model.tokenizer), stream.batch_size):
        tokens_BL = torch.from_numpy(np.stack([c.tokens_L for c in contexts])).to(model.device)
        mask_BL = torch.from_numpy(np.stack([c.mask_L for c in contexts])).to(model.device)
        acts_BLD, logits_clean = clean_logits_and_site(model, tokens_BL, hook)
        x = acts_BLD[mask_BL].double()
        feats, recon = _sae_apply(sae, acts_BLD[mask_BL])
        recon = recon.double()
        n += x.shape[0]
        sum_x = x.sum(0) if sum_x is None else sum_x + x.sum(0)
        sum_sq += float((x * x).sum())
        sum_err += float(((x - recon) ** 2).sum())
        active = feats != 0
        sum_l0 += float(active.sum())
        fired_F |= active.any(0).cpu()

        mask_BL1 = mask_BL.unsqueeze(-1)

        def splice(acts):
            _, r = _sae_apply(sae, acts)
            return torch.where(mask_BL1, r.to(acts.dtype), acts)

        def zero(acts):
            return torch.where(mask_BL1, torch.zeros_like(acts), acts)

        c, k = next_token_ce_sum(logits_clean, tokens_BL, mask_BL)
        del logits_clean
        ce["clean"] += c
        ce["spliced"] += next_token_ce_sum(run_with_site_edit(model, tokens_BL, hook, splice), tokens_BL, mask_BL)[0]
        ce["zero"] += next_token_ce_sum(run_with_site_edit(model, tokens_BL, hook, zero), tokens_BL, mask_BL)[0]
        n_targets += k
        bar.update(tokens_BL.numel())
    bar.close()
    if was_training:
        sae.train()
    if n == 0 or n_targets == 0:
        nan = float("nan")
        return SAEQuality(nan, nan, nan, nan, nan, nan, nan, n)
    mean = sum_x / n
    total_var = sum_sq - n * float((mean * mean).sum())
    ev = 1.0 - sum_err / total_var if total_var > 0 else float("nan")
    ce_clean, ce_spliced, ce_zero = (ce[k] / n_targets for k in ("clean", "spliced", "zero"))
    denom = ce_zero - ce_clean
    recovered = (ce_zero - ce_spliced) / denom if abs(denom) > 1e-12 else float("nan")
    return SAEQuality(
        explained_variance=float(ev),
        l0=sum_l0 / n,
        dead_fraction=float((~fired_F).sum()) / d_sae,
        ce_clean=ce_clean,
        ce_spliced=ce_spliced,
        ce_zero_ablation=ce_zero,
        ce_loss_recovered=float(recovered),
        n_tokens=n,
    )


def finite(q: SAEQuality) -> bool:
    return all(math.isfinite(v) for v in asdict(q).values())
