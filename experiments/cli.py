"""What every ``python -m experiments.<stage>`` entry point shares.

YAML -> pydantic config (unknown keys rejected), ``--set a.b=c`` overrides, ``--out``, and the
rule that bad input ends with exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sources.errors import EXIT_USAGE, ConfigError, format_validation_error

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

C = TypeVar("C", bound=BaseModel)
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError("config", f"file {path} does not exist; pass an existing YAML file")
    if path.is_dir():
        raise ConfigError("config", f"{path} is a directory; pass a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError("config", f"{path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{path} is not a UTF-8 text file") from None
    if data is None:
        raise ConfigError("config", f"{path} is empty; start from experiments/configs/default.yaml")
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of sections (model:, sae:, ...), got {type(data).__name__}")
    return data


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError("--set", f"{assignment!r} is not of the form key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError("--set", f"{key!r} is not a dotted key path like cooc.threshold")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError("--set", f"{'.'.join(parts[:i + 1])} is a value, not a section; cannot set {key}")
        node = nxt
    node[parts[-1]] = value


def build_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    data = read_yaml(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc) from None


def parser(prog: str, description: str, config_default: Path | None = DEFAULT_CONFIG) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("config", nargs="?", default=None if config_default is None else str(config_default),
                   help="YAML config (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.max_tokens=50000 (repeatable)")
    p.add_argument("--out", default=None, help="output folder (overrides the config's out:)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage, ignoring cached results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def entry_point(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's main so that ConfigError becomes exit code 2 and one line on stderr."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        try:
            main(argv)
        except ConfigError as exc:
            print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            # a write that bypassed sources.files (a library's own file): still one line, no traceback
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"error: out: {exc.strerror or exc}{where}; free space or choose a writable --out folder; "
                  "finished stages are kept", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
            return 130
        return 0

    return wrapped
