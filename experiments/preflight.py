"""What is checked before any stage starts, so that a refused command never touches a run folder.

The config itself is validated where it is parsed (pydantic: types, ranges, finite numbers, seeds the RNGs
accept). Here the inputs it names are opened: the corpus files (regular UTF-8 files), a precomputed
activation file (its width against the SAE), the model and SAE (loaded and checked against each other and
the hook, by :func:`sources.session.open_session`), and explicit group ids against the run's finished
co-occurrence stage when that stage will be reused. Checks that need a stage's own result (group ids
when cooc is recomputed in the same command) happen inside the stage, which then writes nothing.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from experiments.cooc import stage_key as cooc_stage_key
from experiments.run import Run
from sources.corpora import check_corpus
from sources.config import require_known_groups
from sources.errors import ConfigError


def check_inputs(cfg, run: Run | None = None, progress: bool = True) -> None:
    """Open every input of ``cfg``: corpus, model and SAE, a precomputed activation file's width and (with
    ``run``) explicit group ids."""
    check_corpus(cfg.data)
    s = cfg.session(progress)
    if cfg.activations.source == "file":
        check_activation_width(Path(cfg.activations.path), s.d_sae)
    if run is not None:
        check_group_ids(cfg, run)


def check_activation_width(path: Path, d_sae: int) -> None:
    """A precomputed activation file must have one column per latent of the configured SAE."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return  # not a numpy file: the cooc stage's reader says so in its own words
    if not isinstance(npz, np.lib.npyio.NpzFile):
        return  # a dense .npy array: likewise
    with npz:
        try:
            shape = tuple(int(x) for x in np.asarray(npz["shape"]).ravel())
        except (OSError, ValueError, KeyError, TypeError, OverflowError, EOFError, zipfile.BadZipFile):
            return
    if len(shape) == 2 and shape[1] != d_sae:
        raise ConfigError("activations.path", f"{path} has {shape[1]} latents per token but the configured SAE has "
                                              f"d_sae={d_sae}; give the activation file computed with this SAE, or set "
                                              "sae: to the SAE the file was computed with")


def check_group_ids(cfg, run: Run) -> None:
    """Explicit ``probes.groups``, ``interventions.groups`` and ``report.groups`` must exist in the run's
    co-occurrence stage, checked here when that stage is finished and will be reused."""
    explicit = {f"{section}.groups": getattr(cfg, section).groups for section in ("probes", "interventions", "report")}
    explicit = {k: v for k, v in explicit.items() if isinstance(v, list)}
    if not explicit or not run.is_done("cooc", cooc_stage_key(cfg, run)):
        return
    from cooc.result import CoocResult

    cooc = CoocResult.load(run.out / "cooc")
    known = list(cooc.members())
    for field, ids in explicit.items():
        require_known_groups(field, ids, known, cooc.groups_csv)
