"""Train an SAE: ``python -m experiments.train_sae [CONFIG.yaml] [--set k=v ...] [--out DIR]``.

CONFIG is an experiment config whose ``sae:`` section has a ``train:`` spec (architecture, d_sae, k,
training_tokens, batch_size, lr, seed); ``model:``, ``hook:``, ``data:`` and ``stream:`` say what it is
trained on. The SAE is written in sae_lens disk format to ``--out`` (default ``<out>/sae``) together with
``train_config.json``, ``quality.json`` (held-out quality) and ``train_stats.json``, and the quality
table is printed. The default config reproduces the built-in default SAE
(``sources/builtin_saes/smollm2-135m-L15-resid_post-topk4096``); see docs/sae.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from experiments.cli import CONFIG_DIR, build_config, entry_point, exit_process, parser
from experiments.config import ExperimentConfig
from sources.errors import ConfigError

log = logging.getLogger("experiments.train_sae")

TRAIN_DEFAULT = CONFIG_DIR / "train_default_sae.yaml"


def build_parser():
    p = parser("python -m experiments.train_sae", __doc__.splitlines()[0], config_default=TRAIN_DEFAULT)
    p.set_defaults(out=None)
    for action in p._actions:
        if action.dest == "out":
            action.help = "folder to write the SAE to (default: the config's out: folder + /sae)"
        if action.dest == "fresh":
            action.help = "ignored: an SAE is always trained anew (the activation cache is still reused)"
    p.add_argument("--eval-dtype", choices=["float32", "bfloat16", "same"], default="float32",
                   help="model dtype the held-out quality is measured with (default: %(default)s, the framework's "
                        "default; 'same': the training model's dtype)")
    p.add_argument("--eval-tokens", type=int, default=None,
                   help="held-out positions to measure quality on (default: the config's sae.train.eval_tokens)")
    return p


def parse_args(argv: list[str] | None = None):
    """The command line of ``python -m experiments.train_sae``."""
    return build_parser().parse_args(argv)


@entry_point
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = build_config(ExperimentConfig, args.config, args.overrides)
    if cfg.sae.train is None:
        raise ConfigError("sae.train", "this config has no sae.train section; add one (see experiments/configs/train_default_sae.yaml)")
    if args.eval_tokens is not None and args.eval_tokens < cfg.data.context_len:
        raise ConfigError("--eval-tokens", f"{args.eval_tokens} is less than one context ({cfg.data.context_len} tokens)")
    out = Path(args.out) if args.out else Path(cfg.out) / "sae"
    if out.exists() and not out.is_dir():
        raise ConfigError("out", f"{out} exists and is not a folder; choose another --out")

    from transformers.utils import logging as hf_logging

    from sources.models import load_model
    from sources.sae_training import train_sae

    hf_logging.disable_progress_bar()  # weight-loading bars: noise, and bad input must end in one line

    model = load_model(cfg.model)
    model.site(cfg.hook.layer, cfg.hook.site)  # bad hook -> ConfigError before anything is trained
    eval_model = None  # the training model
    if args.eval_dtype not in ("same", cfg.model.dtype):
        eval_spec = cfg.model.model_copy(update={"dtype": args.eval_dtype})
        eval_model = lambda: load_model(eval_spec)  # noqa: E731 (loaded after training)
    recorded = cfg.model_dump(mode="json")
    recorded["sae"]["builtin"] = None  # the trained SAE is the source, not the default built-in alias
    t0 = time.time()
    quality = train_sae(
        cfg.sae.train, model, cfg.hook, cfg.data, cfg.stream, out, progress=not args.quiet,
        config=recorded,
        eval_model=eval_model,
        eval_tokens=args.eval_tokens or cfg.sae.train.eval_tokens,
    )
    print(f"SAE written to {out} ({time.time() - t0:.0f} s)")
    print(quality.table())


if __name__ == "__main__":
    exit_process(main())
