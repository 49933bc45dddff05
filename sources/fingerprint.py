"""Content fingerprints of a run's inputs: model weights, SAE files and corpus files.

Caches and stage results are keyed by what their inputs *contain*, not by their names: replacing a
model's weights, an SAE folder, a corpus file or a built-in corpus package's data files under the same
name gives a new key, so nothing computed from the old content is reused.

Hashing reads every byte (SHA-256) once. The digest is then remembered, in memory and under
``$COOC_CACHE/hashes/``, keyed by the file's resolved path, size, mtime, ctime and inode: any write to
the file moves its ctime (which, unlike mtime, cannot be set back), so a changed file is read again,
and an unchanged one is not (the built-in corpus's 611 files, 117 MB, cost about 0.4 s the first time).
Hub models, Hub datasets and sae_lens releases are identified by name (and revision where given): their
bytes live in the Hugging Face cache, outside this project's control.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from sources.files import stable_hash

_MEMO: dict[str, str] = {}


def _stat_key(path: Path) -> str:
    st = path.stat()
    return stable_hash([str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], 32)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex, 32 digits) of the file's bytes, remembered until the file changes."""
    from sources.models import cache_root

    path = Path(path).expanduser().resolve()
    key = _stat_key(path)
    if key in _MEMO:
        return _MEMO[key]
    store = cache_root() / "hashes" / key
    try:
        digest = store.read_text().strip()
        if len(digest) == 32:
            _MEMO[key] = digest
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()[:32]
    _MEMO[key] = digest
    try:  # the store only saves time; an unwritable cache is not an error
        store.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.with_name(f".{key}.{os.getpid()}.tmp")
        tmp.write_text(digest + "\n")
        os.replace(tmp, store)
    except OSError:
        pass
    return digest


def tree_digest(files: Iterable[Path], root: Path | None = None) -> str:
    """Digest of a set of files: their names (relative to ``root``) and contents."""
    items = []
    for f in sorted(Path(x) for x in files):
        name = str(f.relative_to(root)) if root is not None else f.name
        items.append([name, file_digest(f)])
    return stable_hash(items, 32)


def folder_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file under ``folder`` (recursively)."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                                  for part in p.relative_to(folder).parts))


def folder_digest(folder: str | os.PathLike) -> str:
    folder = Path(folder).expanduser()
    return tree_digest(folder_files(folder), root=folder)


def model_fingerprint(spec) -> dict:
    """Content identity of ``model:`` (a ModelSpec): the GGUF file's or the model folder's digest."""
    from sources.models import BUILTIN_MODELS

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


def sae_fingerprint(spec) -> dict:
    """Content identity of ``sae:`` (an SAESpec): the digest of its folder in sae_lens disk format."""
    from sources.saes import BUILTIN_SAE_DIR, BUILTIN_SAES

    if spec.builtin is not None and spec.builtin in BUILTIN_SAES:
        return {"builtin": spec.builtin, "sha": folder_digest(BUILTIN_SAE_DIR / BUILTIN_SAES[spec.builtin])}
    if spec.path is not None and Path(spec.path).expanduser().is_dir():
        return {"path": Path(spec.path).name, "sha": folder_digest(spec.path)}
    # a sae_lens release is identified by release and id; a trained SAE by its training spec, which
    # (with the model's and corpus's content) keys the folder it is trained into
    return {"spec": spec.model_dump(mode="json")}


def data_fingerprint(spec) -> dict:
    """Content identity of ``data:`` (a DataSpec): the digest of the corpus's source files."""
    if spec.source == "builtin":
        from sources.builtin_corpus import corpus_files

        files = corpus_files(spec.name)
        return {"builtin": spec.name, "sha": tree_digest(files)}
    if spec.source in ("text", "jsonl") and spec.path:
        from sources.corpora import _expand

        return {"files": tree_digest(_expand(spec.path))}
    if spec.source == "hf_disk" and spec.path and Path(spec.path).expanduser().is_dir():
        return {"hf_disk": folder_digest(spec.path)}
    return {}  # a Hub dataset: identified by the data: section itself (name, split)


def inputs_fingerprint(cfg) -> dict:
    """Content identity of an experiment config's model, SAE and corpus (stage keys include it)."""
    return {"model": model_fingerprint(cfg.model), "sae": sae_fingerprint(cfg.sae), "data": data_fingerprint(cfg.data)}
