"""What every ``python -m experiments.<stage>`` entry point shares.

YAML -> pydantic config (unknown keys rejected), ``--set a.b=c`` overrides, ``--out``, and the
rule that bad input ends with exit code 2 and one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import functools
import logging
import signal
import os
import sys
import threading
from pathlib import Path
from typing import Any, Callable, NoReturn, TypeVar

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
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    set_key(data, key, value, "--set")


def set_key(data: dict, key: str, value: Any, field: str = "--set") -> None:
    """Set the dotted ``key`` (``a.b.c``) of a nested dict to ``value`` in place, creating missing sections;
    ConfigError under ``field`` for a malformed key or one that runs through a value."""
    parts = [p for p in str(key).strip().split(".")]
    if not all(parts):
        raise ConfigError(field, f"{key!r} is not a dotted key path like cooc.threshold")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(field, f"{'.'.join(parts[:i + 1])} is a value, not a section; cannot set {key}")
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


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors (unknown flag, missing value) are one line and exit 2 like every other bad input."""

    def error(self, message: str):
        raise ConfigError("arguments", f"{message}; see {self.prog} --help")


def parser(prog: str, description: str, config_default: Path | None = DEFAULT_CONFIG) -> argparse.ArgumentParser:
    p = ArgumentParser(prog=prog, description=description)
    p.add_argument("config", nargs="?", default=None if config_default is None else str(config_default),
                   help="YAML config (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set data.max_tokens=50000 (repeatable)")
    p.add_argument("--out", default=None, help="output folder (overrides the config's out:)")
    p.add_argument("--fresh", action="store_true", help="recompute every stage, ignoring cached results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: temporary files are removed on the way out and the run resumes."""


def _terminate(signum, frame):
    raise Terminated()


def entry_point(main: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's main so that every failure a user can cause is one line on stderr: ConfigError and OS
    errors exit 2, Ctrl-C exits 130 and SIGTERM 143 (both resumable). Folder locks are released on the way out."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None) -> int:
        from experiments.run import held_locks, release_locks

        locks_before = held_locks()
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _terminate), signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            main(argv)
        except ConfigError as exc:
            print(f"error: {exc.field}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        except OSError as exc:
            print(f"error: {_os_message(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except RecursionError:
            print("error: input: a file or value is nested too deeply to read; check the config and input files",
                  file=sys.stderr)
            return EXIT_USAGE
        except MemoryError:
            print("error: memory: the machine ran out of memory; lower data.max_tokens, stream.batch_size or "
                  "interventions.batch_size, or use a machine with more memory; finished stages are kept", file=sys.stderr)
            return EXIT_USAGE
        except Terminated:
            print("terminated (SIGTERM); rerun the same command to resume from the last checkpoint", file=sys.stderr)
            return 143
        except KeyboardInterrupt:
            print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
            return 130
        finally:
            release_locks(held_locks() - locks_before)  # this command's own; a caller's stay held
            if previous is not None:  # the start-up handler of experiments/__init__ is not put back
                starting = getattr(previous[0], "__name__", "") == "_while_starting"
                signal.signal(signal.SIGTERM, signal.SIG_DFL if starting else previous[0])
                signal.signal(signal.SIGINT, signal.default_int_handler if starting else previous[1])
        return 0

    return wrapped


def exit_process(code: int) -> NoReturn:
    """End a ``python -m experiments.<stage>`` process with ``code``.

    After Ctrl-C or SIGTERM (130, 143) the process ends through ``os._exit`` once stdout and stderr are flushed (the
    entry point has already cleaned up): a KeyboardInterrupt that lands inside code a library runs with ``exec()`` of
    a string (nnsight does) leaves CPython's "unhandled KeyboardInterrupt" flag set even though the entry point caught
    it, and the interpreter would then end by re-raising SIGINT (exit status -2) instead of returning 130.
    """
    if code in (130, 143):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def _os_message(exc: OSError) -> str:
    """One line for an OS error that escaped the project's own writers (a library's file, an OS limit)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in DISK_ERRNOS:
        return (f"out: {exc.strerror or exc}{where}; free space or choose a writable --out folder; "
                "finished stages are kept")
    if exc.errno == errno.ENAMETOOLONG:
        return f"path: file name too long{where}; use shorter names (a component may have at most 255 bytes)"
    return f"file: {exc.strerror or exc}{where}; check the path and its permissions"
