"""Train an SAE at a model's hook with sae_lens, fed by the framework's own activation stream.

The model runs over the training split of the corpus (every document except the held-out ones, see
:func:`sources.sae_quality.training_data`), truncated at the hook (:mod:`sources.stream`, so
``stream.cache: true`` caches the activations and a second epoch reads them from disk). Masked
positions (BOS/PAD/EOS) are dropped, the rest are shuffled in an in-memory buffer and handed to
sae_lens's :class:`~sae_lens.training.sae_trainer.SAETrainer` as float32 batches of
``train.batch_size`` rows until ``train.training_tokens`` rows have been trained on. When the stream
(``data.max_tokens``) is shorter than that, it is repeated (epochs).

sae_lens choices: its training SAE classes with their default initialisation (decoder rows of norm
0.1, encoder = decoder transposed; TopK/BatchTopK rescale activations by the decoder norm), inputs
scaled to mean norm sqrt(d_in) during training (``expected_average_only_in``; the factor is folded
into the weights at the end, so the saved SAE takes raw activations), Adam with a constant learning
rate after a short linear warm-up and a linear decay over the last fifth of the steps, gradient
norm clipped at 1 (SAETrainer's default).

The output folder holds the *inference* SAE in sae_lens disk format (``cfg.json`` +
``sae_weights.safetensors``; TopK saved as TopK with unit-norm decoder rows, BatchTopK as JumpReLU),
``train_config.json`` (the configuration it was trained with), ``quality.json``
(:class:`~sources.sae_quality.SAEQuality` on held-out documents) and ``train_stats.json`` (tokens,
steps, wall time). The folder is written as ``<out>.tmp`` and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from sources.config import DataSpec, HookSpec, StreamSpec, TrainSpec
from sources.errors import ConfigError
from sources.files import package_versions, write_json
from sources.models import LoadedModel
from sources.sae_quality import SAEQuality, evaluate_sae, heldout_data, training_data
from sources.stream import iter_activation_batches

os.environ.setdefault("WANDB_MODE", "disabled")
log = logging.getLogger(__name__)

DEFAULT_EVAL_TOKENS = 16_384
"""Positions (all, masked included) of held-out contexts the quality metrics are measured on."""
NORM_ESTIMATE_TOKENS = 32_768
"""Rows sae_lens uses to estimate the activation scaling factor before training (at most 5% of the steps)."""


def _buffer_rows(batch_size: int, d_in: int) -> int:
    """Rows of the shuffle buffer: at least 8 batches, about 128k rows, at most ~1 GB of float32."""
    cap = max(1, (1 << 30) // (4 * d_in))
    return max(8 * batch_size, min(1 << 17, cap))


def shuffled_activation_batches(model: LoadedModel, hook: HookSpec, data: DataSpec, stream: StreamSpec,
                                batch_size: int, seed: int, progress: bool = True,
                                stats: dict | None = None, max_epochs: int | None = None) -> Iterator[torch.Tensor]:
    """Endless float32 batches ``[batch_size, d_model]`` of unmasked activations, shuffled in a buffer.

    The stream is restarted (next epoch) when it ends; ``max_epochs`` stops after that many. ``stats``
    (if given) is updated with ``unique_tokens`` (unmasked positions of one epoch) and ``epochs``.
    """
    gen = torch.Generator().manual_seed(seed)
    capacity = _buffer_rows(batch_size, model.d_model)
    pending: list[torch.Tensor] = []
    n_pending = 0
    stats = stats if stats is not None else {}
    stats.setdefault("epochs", 0)
    stats.setdefault("unique_tokens", 0)

    def drain(keep: int) -> Iterator[torch.Tensor]:
        nonlocal pending, n_pending
        pool = torch.cat(pending)
        pool = pool[torch.randperm(pool.shape[0], generator=gen)]
        n_out = ((pool.shape[0] - keep) // batch_size) * batch_size
        for start in range(0, n_out, batch_size):
            yield pool[start:start + batch_size]
        pending = [pool[n_out:]]
        n_pending = pool.shape[0] - n_out

    epoch = 0
    while max_epochs is None or epoch < max_epochs:
        seen = 0
        for batch in iter_activation_batches(model, data, hook, stream, progress=progress and epoch == 0):
            acts = batch.masked_acts_ND().detach().to("cpu", torch.float32)
            if acts.shape[0] == 0:
                continue
            seen += acts.shape[0]
            pending.append(acts)
            n_pending += acts.shape[0]
            if n_pending >= capacity:
                yield from drain(keep=capacity // 2)
        if seen == 0:
            raise ConfigError("data", "the corpus yielded no unmasked tokens to train the SAE on")
        epoch += 1
        stats["epochs"] = epoch
        if epoch == 1:
            stats["unique_tokens"] = seen
            log.info("SAE training stream: %d unmasked tokens per epoch", seen)
        if n_pending >= batch_size:
            yield from drain(keep=0)


def _training_sae(train: TrainSpec, d_in: int, device: str, metadata):
    from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,
                          JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig,
                          TopKTrainingSAE, TopKTrainingSAEConfig)

    common = dict(d_in=d_in, d_sae=train.d_sae, dtype="float32", device=device,
                  normalize_activations="expected_average_only_in", metadata=metadata)
    if train.architecture == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=train.k, **common))
    if train.architecture == "batchtopk":
        return BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=train.k, **common))
    if train.architecture == "relu":
        return StandardTrainingSAE(StandardTrainingSAEConfig(l1_coefficient=train.l1_coefficient, **common))
    if train.architecture == "jumprelu":
        return JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(l0_coefficient=train.l1_coefficient, **common))
    raise ConfigError("sae.train.architecture", f"unknown architecture {train.architecture!r}")  # pragma: no cover


def check_train_spec(train: TrainSpec) -> None:
    """ConfigError for a training spec that cannot train (k above d_sae, fewer tokens than one batch)."""
    if train.architecture in ("topk", "batchtopk") and train.k > train.d_sae:
        raise ConfigError("sae.train.k", f"k={train.k} is larger than d_sae={train.d_sae}; choose k <= d_sae")
    if train.training_tokens < train.batch_size:
        raise ConfigError("sae.train.training_tokens", f"{train.training_tokens} tokens is less than one batch "
                          f"(batch_size={train.batch_size}); raise training_tokens or lower batch_size")


def _schedule(n_steps: int) -> tuple[int, int]:
    """(warm-up steps, decay steps): 5% warm-up (at most 1000), linear decay over the last 20%."""
    warm = min(1000, n_steps // 20)
    decay = n_steps // 5
    return warm, decay


def sae_metadata(model: LoadedModel, hook: HookSpec, data: DataSpec):
    from sae_lens.saes.sae import SAEMetadata

    return SAEMetadata(
        model_name=model.name,
        hook_name=model.site(hook.layer, hook.site).hook_name,
        context_size=data.context_len,
        prepend_bos=True,
        dataset=f"{data.source}:{data.path or data.name}",
        exclude_special_tokens=True,
    )


def train_sae(train: TrainSpec, model: LoadedModel, hook: HookSpec, data: DataSpec, stream: StreamSpec,
              out_dir: Path, progress: bool = True, *, config: dict | None = None,
              eval_model: LoadedModel | Callable[[], LoadedModel] | None = None, eval_tokens: int = DEFAULT_EVAL_TOKENS) -> SAEQuality:
    """Train an SAE per ``train`` at ``hook`` of ``model`` on ``data`` and save it to ``out_dir``.

    ``config`` is the full experiment config to record in ``train_config.json`` (default: the sections
    given here). ``eval_model`` is the model the held-out quality is measured with, or a function that
    loads it after training (default: ``model``; pass the float32 model when training streams a
    bfloat16 one). Returns that quality.
    """
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training import activation_scaler as scaler_module
    from sae_lens.training import sae_trainer as trainer_module

    check_train_spec(train)
    where = model.site(hook.layer, hook.site)  # ConfigError for a bad hook before any work
    out_dir = Path(out_dir)
    t0 = time.time()
    torch.manual_seed(train.seed)
    device = str(model.device)
    sae = _training_sae(train, model.d_model, device, sae_metadata(model, hook, data))

    n_steps = -(-train.training_tokens // train.batch_size)
    warm, decay = _schedule(n_steps)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=n_steps * train.batch_size,
        train_batch_size_samples=train.batch_size,
        lr=train.lr,
        lr_end=train.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=warm,
        lr_decay_steps=decay,
        device=device,
        n_batches_for_norm_estimate=max(1, min(NORM_ESTIMATE_TOKENS // train.batch_size, n_steps // 20)),
        dead_feature_window=max(1, min(1000, n_steps // 10)),
        feature_sampling_window=max(1, min(2000, n_steps // 5)),
        logger=LoggingConfig(log_to_wandb=False),
    )
    stats: dict = {}
    provider = shuffled_activation_batches(model, hook, training_data(data), stream, train.batch_size,
                                           seed=train.seed, progress=progress, stats=stats)
    trainer = trainer_module.SAETrainer(trainer_cfg, sae, provider)
    quiet = contextlib.nullcontext() if progress else _quiet_bars(trainer_module, scaler_module)
    with quiet:
        trainer.fit()
    provider.close()
    train_s = time.time() - t0
    log.info("trained %s SAE (d_sae=%d) on %d tokens in %.0f s", train.architecture, train.d_sae, trainer.n_training_samples, train_s)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sae.save_inference_model(tmp)
    inference = SAE.load_from_disk(tmp, device=device)
    inference.eval()
    t1 = time.time()
    if eval_model is None:
        eval_model = model
    elif not isinstance(eval_model, LoadedModel):
        eval_model = eval_model()
    quality = evaluate_sae(inference, eval_model, hook, heldout_data(data, eval_tokens), stream, progress=progress)
    eval_s = time.time() - t1
    log.info("held-out quality: EV %.3f, L0 %.1f, dead %.3f, CE loss recovered %.3f (%d tokens, %.0f s)",
             quality.explained_variance, quality.l0, quality.dead_fraction, quality.ce_loss_recovered, quality.n_tokens, eval_s)

    eval_dtype = eval_model.identity.get("dtype")
    write_json(tmp / "quality.json", {**quality.to_dict(), "eval_model_dtype": eval_dtype,
                                      "eval_data": heldout_data(data, eval_tokens).model_dump()})
    write_json(tmp / "train_config.json", config if config is not None else {
        "model": {"name": model.name, "dtype": model.identity.get("dtype")},
        "hook": hook.model_dump(), "sae": {"train": train.model_dump()},
        "data": data.model_dump(), "stream": stream.model_dump()})
    write_json(tmp / "train_stats.json", {
        "hook_name": where.hook_name,
        "training_tokens": trainer.n_training_samples,
        "steps": trainer.n_training_steps,
        "unique_training_tokens": stats.get("unique_tokens"),
        "stream_passes_completed": stats.get("epochs"),
        "lr_warm_up_steps": warm,
        "lr_decay_steps": decay,
        "train_wall_s": round(train_s, 1),
        "eval_wall_s": round(eval_s, 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "versions": package_versions(),
    })
    _replace_dir(tmp, out_dir)
    return quality


@contextlib.contextmanager
def _quiet_bars(*modules):
    """Silence the progress bars of sae_lens's trainer and scaler (they have no switch for it)."""
    originals = [m.tqdm for m in modules]
    for m, original in zip(modules, originals):
        m.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        for m, original in zip(modules, originals):
            m.tqdm = original


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder onto ``out_dir`` (replacing an older one)."""
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        old = out_dir.with_name(out_dir.name + ".old")
        if out_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise ConfigError("out", f"cannot write the SAE to {out_dir}: {exc.strerror or exc}") from None
