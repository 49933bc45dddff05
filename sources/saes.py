"""SAEs through sae_lens: built-in, pretrained releases, sae_lens disk format, or trained on demand.

Whatever the source, :func:`load_sae` checks that the SAE fits the model and hook it is used with:
its input width must equal the model's ``d_model`` and, when the SAE records its hook, that hook must
be the configured one (``blocks.{layer}.hook_{site}``).
"""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import torch

from sources.config import DataSpec, HookSpec, SAESpec
from sources.errors import ConfigError
from sources.files import cache_root, stable_hash
from sources.fingerprint import folder_digest
from sources.hub import require_hub
from sources.models import LoadedModel
from sources.sniff import check_sae_folder

os.environ.setdefault("WANDB_MODE", "disabled")
log = logging.getLogger(__name__)

BUILTIN_SAE_DIR = Path(__file__).resolve().parent / "builtin_saes"
BUILTIN_SAES = {
    # alias -> folder under sources/builtin_saes (sae_lens disk format, with train config and quality.json)
    "default": "smollm2-135m-L15-resid_post-topk4096",
}


def _sae_class():
    from sae_lens import SAE

    return SAE


def load_sae_dir(path: str | Path, device: torch.device | str = "cpu", field: str = "sae.path"):
    """Load an SAE saved in sae_lens disk format (cfg.json + sae_weights.safetensors)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ConfigError(field, f"{path} is not a directory; give a folder in sae_lens disk format (cfg.json + sae_weights.safetensors)")
    missing = [f for f in ("cfg.json", "sae_weights.safetensors") if not (path / f).exists()]
    if missing:
        raise ConfigError(field, f"{path} is not in sae_lens disk format: missing {', '.join(missing)}")
    check_sae_folder(path, field)
    try:
        return _sae_class().load_from_disk(path, device=str(device))
    except Exception as exc:  # corrupt weights or config written by another version
        raise ConfigError(field, f"could not load the SAE in {path}: {type(exc).__name__}: {exc}") from None


def check_pretrained_id(release: str, sae_id: str) -> dict:
    """Validate a sae_lens release/id against sae_lens's offline directory of pretrained SAEs."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    if release not in directory:
        close = difflib.get_close_matches(release, list(directory), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see sae_lens's pretrained_saes.yaml for releases"
        raise ConfigError("sae.release", f"unknown sae_lens release {release!r}{hint}")
    entry = directory[release]
    ids = list(entry.saes_map)
    if sae_id not in entry.saes_map:
        close = difflib.get_close_matches(sae_id, ids, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {', '.join(ids[:3])}"
        raise ConfigError("sae.id", f"release {release!r} has no SAE {sae_id!r}; {hint}")
    return {"release": release, "id": sae_id, "model": entry.model, "repo_id": entry.repo_id}


def load_pretrained(release: str, sae_id: str, device: torch.device | str = "cpu"):
    info = check_pretrained_id(release, sae_id)
    require_hub("sae.release", f"{release}/{sae_id} ({info['repo_id']})", "use sae.path, sae.builtin or sae.train")
    try:
        return _sae_class().from_pretrained(release, sae_id, device=str(device))
    except Exception as exc:  # almost always: the Hub is not reachable
        raise ConfigError("sae.release", f"could not download {release}/{sae_id} from {info['repo_id']} "
                          f"({type(exc).__name__}); the Hub must be reachable, or use sae.path / sae.builtin / sae.train") from None


def trained_sae_dir(spec: SAESpec, model: LoadedModel, hook: HookSpec, data: DataSpec) -> Path:
    key = stable_hash({"train": spec.train.model_dump(exclude={"eval_tokens"}), "model": model.identity, "hook": hook.model_dump(),
                       "data": data.model_dump(exclude={"max_tokens"})})
    return cache_root() / "saes" / key


def sae_folder(spec: SAESpec, model: LoadedModel, hook: HookSpec, data: DataSpec | None = None) -> Path | None:
    """The folder an SAE is loaded from (built-in, sae.path or the training cache), or None for a Hub release.

    Built-in and trained SAEs hold ``quality.json`` there (held-out explained variance, L0, CE loss recovered).
    """
    if spec.builtin is not None:
        return BUILTIN_SAE_DIR / BUILTIN_SAES.get(spec.builtin, spec.builtin)
    if spec.release is not None:
        return None
    if spec.path is not None:
        return Path(spec.path).expanduser()
    return trained_sae_dir(spec, model, hook, data) if data is not None else None


def load_sae(spec: SAESpec, model: LoadedModel, hook: HookSpec, data: DataSpec | None = None):
    """Load the SAE described by ``spec`` on the model's device and check that it fits model and hook
    (a ``train:`` spec loads the SAE trained for this model, hook and corpus; see sources.session)."""
    device = model.device
    if spec.builtin is not None:
        if spec.builtin not in BUILTIN_SAES:
            raise ConfigError("sae.builtin", f"unknown built-in SAE {spec.builtin!r}; available: {', '.join(BUILTIN_SAES)}")
        sae = load_sae_dir(BUILTIN_SAE_DIR / BUILTIN_SAES[spec.builtin], device, field="sae.builtin")
    elif spec.release is not None:
        sae = load_pretrained(spec.release, spec.id, device)
    elif spec.path is not None:
        sae = load_sae_dir(spec.path, device)
    else:
        if data is None:
            raise ConfigError("sae.train", "training an SAE needs a data: section")
        folder = trained_sae_dir(spec, model, hook, data)
        if not (folder / "cfg.json").exists():  # training on demand is the session's decision (sources.session)
            raise ConfigError("sae.train", f"this SAE has not been trained yet (nothing in {folder}); open a session "
                                           "with this config (sources.session.open_session, or python -m "
                                           "experiments.steer), which trains it into that folder")
        sae = load_sae_dir(folder, device, field="sae.train")
    check_compatible(sae, model, hook, check_hook=spec.check_hook)
    sae.eval()
    sae.requires_grad_(False)
    return sae


def check_compatible(sae, model: LoadedModel, hook: HookSpec, check_hook: bool = True) -> None:
    d_in = int(sae.cfg.d_in)
    if d_in != model.d_model:
        raise ConfigError("sae", f"SAE input width d_in={d_in} does not match {model.name}'s d_model={model.d_model}; "
                          "use an SAE trained on this model")
    site = model.site(hook.layer, hook.site)
    recorded = sae.cfg.metadata.get("hook_name") if hasattr(sae.cfg, "metadata") else None
    if check_hook and recorded and recorded != site.hook_name:
        raise ConfigError("hook", f"the SAE was trained at {recorded} but hook is {site.hook_name}; set hook.layer/hook.site "
                          "to match the SAE, or sae.check_hook: false to use it anyway")


def sae_fingerprint(spec: SAESpec) -> dict:
    """Content identity of ``sae:``: the digest of its folder in sae_lens disk format."""
    if spec.builtin is not None and spec.builtin in BUILTIN_SAES:
        return {"builtin": spec.builtin, "sha": folder_digest(BUILTIN_SAE_DIR / BUILTIN_SAES[spec.builtin])}
    if spec.path is not None and Path(spec.path).expanduser().is_dir():
        return {"path": Path(spec.path).name, "sha": folder_digest(spec.path)}
    # a sae_lens release is identified by release and id; a trained SAE by its training spec, which
    # (with the model's and corpus's content) keys the folder it is trained into
    return {"spec": spec.model_dump(mode="json")}
