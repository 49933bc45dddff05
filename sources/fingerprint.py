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

This module only digests files; each input's fingerprint lives beside its loader
(:func:`sources.models.model_fingerprint`, :func:`sources.saes.sae_fingerprint`,
:func:`sources.corpora.data_fingerprint`), so the digests sit below every loader and import none of them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable

from sources.files import cache_root, stable_hash

_MEMO: dict[str, str] = {}


def _stat_key(path: Path) -> str:
    st = path.stat()
    return stable_hash([str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino], 32)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex, 32 digits) of the file's bytes, remembered until the file changes."""
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
