"""One output folder = one run: its manifest records the config, versions, seed and completed stages.

The record is written only when a stage *finishes*, never when one starts, so a command that is refused,
fails or is killed leaves ``manifest.json`` and every recorded file byte-identical. A stage writes into
``OUT/.staging/<stage>/``; when its body returns, that folder replaces ``OUT/<stage>/`` and the manifest
records the stage as complete, with a key hashing exactly the config sections it depends on and the
SHA-256 of every file it wrote. A rerun skips a stage whose key is unchanged and whose files still have
their recorded digests, and recomputes it otherwise; ``--fresh`` recomputes everything. Later stages and
the report refuse a recorded stage whose files were since deleted, truncated or edited
(:meth:`Run.require_intact`). Digests are remembered by path, size, mtime, ctime and inode, so checking
an unchanged 200 MB cooc folder costs no reading.

One process at a time writes to a folder: :func:`lock_folder` takes an exclusive ``flock`` on the folder
itself (no lock file; the kernel drops the lock when its process ends, so a killed run never leaves a
stale lock behind).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import platform
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sources.errors import RECOMPUTE, ConfigError
from sources.files import atomic_path, git_commit, git_dirty, package_versions, stable_hash, write_json
from sources.fingerprint import file_digest

log = logging.getLogger(__name__)

STAGING = ".staging"
"""``OUT/.staging/<stage>/``: where a running stage writes; it replaces ``OUT/<stage>/`` when the stage finishes."""
PARTIAL = ".partial"
"""Checkpoints inside a staging folder that survive a killed stage (the interventions stage's finished groups)."""

_LOCKS: dict[Path, int] = {}  # folder -> open descriptor holding this process's flock
_CREATED: list[Path] = []  # folders lock_folder created, removed again by release_locks if left empty


def lock_folder(out: Path) -> None:
    """Hold an exclusive lock on ``out`` (created if missing) for the rest of this process.

    Re-entrant within a process; a folder another live process holds is refused with one line. The lock is
    an ``flock`` on the folder's own descriptor, so no file is written and a killed holder frees it at once.
    """
    out = Path(out).resolve()
    if out in _LOCKS:
        return
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError("out", f"{out} exists and is not a folder; choose another --out")
        if not out.exists():
            out.mkdir(parents=True)
            _CREATED.append(out)
        fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise ConfigError("out", f"cannot create or open {out} ({exc.strerror}); choose a writable --out folder with "
                                 "a shorter name") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError("out", f"{out} is in use by another running command (it holds the folder's lock); wait for "
                                 "it to finish or choose another --out") from None
    _LOCKS[out] = fd


def release_locks(remove_empty: bool = True) -> None:
    """Release every folder lock of this process; folders it created and left empty are removed."""
    for out, fd in list(_LOCKS.items()):
        os.close(fd)
        del _LOCKS[out]
    while remove_empty and _CREATED:
        out = _CREATED.pop()
        try:
            out.rmdir()  # only if empty: a refused command leaves no trace
        except OSError:
            pass


def read_manifest(out: Path) -> dict:
    """The run record of ``out`` ({} when there is none); ConfigError naming the fix when it is damaged."""
    path = Path(out) / "manifest.json"
    if not path.exists():
        return {}
    fix = f"rerun with --fresh to recompute the folder, or choose another --out"
    try:
        m = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("out", f"{path} is damaged (not valid JSON: truncated or edited); {fix}") from None
    except OSError as exc:
        raise ConfigError("out", f"cannot read {path} ({exc.strerror}); {fix}") from None
    stages = m.get("stages") if isinstance(m, dict) else None
    if not isinstance(stages, dict) or not all(
            isinstance(rec, dict) and isinstance(rec.get("files", {}), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in rec.get("files", {}).items())
            for rec in stages.values()):
        raise ConfigError("out", f"{path} is damaged (not a run record: it needs a 'stages' mapping of stage records); {fix}")
    return m


def changed_file(out: Path, stage: str, rec: dict) -> Path | None:
    """The first file recorded for ``stage`` (``rec``: its manifest record) that is missing or differs from
    its recorded digest, or None."""
    recorded = {Path(out) / stage / n: d for n, d in (rec.get("files") or {}).items()}
    recorded.update({Path(out) / n: d for n, d in (rec.get("copies") or {}).items()})
    for path, digest in recorded.items():
        if not path.is_file() or file_digest(path) != digest:
            return path
    return None


def _refuse_changed(stage: str, changed: Path | None, fix: str) -> None:
    if changed is not None:
        what = "was deleted" if not changed.is_file() else "changed (truncated or edited)"
        raise ConfigError(stage, f"{changed} {what} since the {stage} stage wrote it; {fix}")


def verify_record(out: Path) -> dict:
    """The manifest of ``out`` after checking every file of every recorded stage against its digest:
    ConfigError naming the first deleted, truncated or edited file (for readers such as the report)."""
    manifest = read_manifest(out)
    for stage, rec in manifest.get("stages", {}).items():
        if rec.get("complete"):
            _refuse_changed(stage, changed_file(out, stage, rec), RECOMPUTE)
    return manifest


@dataclass
class Run:
    out: Path
    config: dict
    fresh: bool = False
    manifest: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        lock_folder(self.out)
        for stale in self.out.glob(".*.tmp*"):  # an atomic write of a killed process (the lock is ours now)
            stale.unlink(missing_ok=True)
        old = {} if self.fresh else read_manifest(self.out)
        self._current: set[str] = set()  # stages verified or computed for this config in this process
        self.manifest = {
            "config": self.config,
            "config_hash": stable_hash(self.config),
            "seed": self.config.get("seed"),
            "versions": package_versions(),
            "python": platform.python_version(),
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "stages": old.get("stages", {}),
            "complete": False,
        }
        # nothing is written here: the record changes only when a stage finishes (Run.stage)

    def _write(self) -> None:
        write_json(self.out / "manifest.json", self.manifest, field="out")

    def stage_key(self, *sections: str) -> str:
        return stable_hash({s: self.config.get(s) for s in sections})

    def is_done(self, stage: str, key: str) -> bool:
        rec = self.manifest["stages"].get(stage)
        done = bool(rec and rec.get("key") == key and rec.get("complete")) and self.files_intact(stage)
        if done:
            self._current.add(stage)
        return done

    def _changed_file(self, stage: str) -> Path | None:
        return changed_file(self.out, stage, self.manifest["stages"].get(stage) or {})

    def files_intact(self, stage: str) -> bool:
        """Whether every file recorded for ``stage`` still exists with the recorded content hash."""
        changed = self._changed_file(stage)
        if changed is not None:
            log.warning("%s: %s is missing or changed since the stage finished; recomputing the stage", stage, changed)
        return changed is None

    def require_intact(self, stage: str, fix: str) -> None:
        """ConfigError naming the file when a recorded file of ``stage`` was deleted, truncated or edited."""
        _refuse_changed(stage, self._changed_file(stage), fix)

    @contextmanager
    def stage(self, stage: str, key: str) -> Iterator[Path]:
        """Run a stage's body in ``OUT/.staging/<stage>/`` (yielded); when it returns normally, that folder
        replaces ``OUT/<stage>/`` and the stage is recorded complete (key, wall time, file digests). When it
        raises, the staging folder is emptied (but for its ``.partial`` checkpoints) and nothing else changes."""
        staging = self.out / STAGING / stage
        try:
            staging.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("out", f"cannot create {staging} ({exc.strerror}); choose a writable --out folder") from None
        _clear(staging, keep=PARTIAL)  # what a killed process left, but its checkpoints
        start = time.perf_counter()
        try:
            yield staging
        except BaseException:
            _clear(staging, keep=PARTIAL)
            _remove_empty(staging, self.out / STAGING)
            raise
        signals = {signal.SIGINT, signal.SIGTERM}
        if threading.current_thread() is threading.main_thread():  # a signal now waits until the record is written
            signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            self._commit(stage, key, staging, start)
        finally:
            if threading.current_thread() is threading.main_thread():
                signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)

    def _commit(self, stage: str, key: str, staging: Path, start: float) -> None:
        """``staging`` replaces ``OUT/<stage>`` and the manifest records the stage (signals blocked meanwhile)."""
        shutil.rmtree(staging / PARTIAL, ignore_errors=True)
        files = {str(p.relative_to(staging)): file_digest(p) for p in sorted(staging.rglob("*"))
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(staging).parts)}
        folder = self.out / stage
        old = self.out / STAGING / f"{stage}.replaced"
        try:
            shutil.rmtree(old, ignore_errors=True)
            if folder.exists():
                os.replace(folder, old)
            os.replace(staging, folder)
        except OSError as exc:
            raise ConfigError("out", f"cannot move {staging} to {folder} ({exc.strerror}); choose a writable --out "
                                     "folder") from None
        shutil.rmtree(old, ignore_errors=True)
        _remove_empty(self.out / STAGING)
        self.manifest["stages"][stage] = {"key": key, "complete": True, "wall_s": round(time.perf_counter() - start, 2),
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files,
                                          "config_hash": self.manifest["config_hash"]}
        self.manifest["complete"] = False  # until finish() finds every stage of this config done
        self._current.add(stage)
        self._write()

    def publish(self, stage: str, name: str) -> None:
        """Copy ``OUT/<stage>/<name>`` to ``OUT/<name>`` (atomically) and record the copy with the stage."""
        rec = self.manifest["stages"][stage]
        with atomic_path(self.out / name) as tmp:
            shutil.copyfile(self.out / stage / name, tmp)
        rec["copies"] = {**rec.get("copies", {}), name: rec["files"][name]}
        self._write()

    def finish(self, stages: list[str]) -> None:
        """Record whether every stage of this config is complete; the stages verified or computed in this
        process are marked as belonging to this config."""
        for s in self._current:
            self.manifest["stages"][s]["config_hash"] = self.manifest["config_hash"]
        self.manifest["complete"] = all(s in self._current for s in stages)
        self._write()


def _clear(folder: Path, keep: str) -> None:
    for p in folder.iterdir() if folder.is_dir() else []:
        if p.name == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _remove_empty(*folders: Path) -> None:
    for f in folders:
        try:
            f.rmdir()
        except OSError:
            pass
