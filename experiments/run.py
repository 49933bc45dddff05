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
from sources.files import atomic_path, git_commit, git_dirty, json_text, package_versions, stable_hash, write_json
from sources.fingerprint import file_digest

log = logging.getLogger(__name__)

STAGING = ".staging"
"""``OUT/.staging/<stage>/``: where a running stage writes; it replaces ``OUT/<stage>/`` when the stage finishes."""
PARTIAL = ".partial"
"""Checkpoints inside a staging folder that survive a killed stage (the interventions stage's finished groups)."""

_LOCKS: dict[Path, int] = {}  # folder -> open descriptor holding this process's flock
_CREATED: list[Path] = []  # folders lock_folder created, removed again by release_locks if left empty


def lock_folder(out: Path) -> bool:
    """Hold an exclusive lock on ``out`` (created if missing) until :func:`release_locks`; True when this call
    took it, False when this process already held it.

    Re-entrant within a process; a folder another live process holds is refused with one line. The lock is
    an ``flock`` on the folder's own descriptor, so no file is written and a killed holder frees it at once.
    """
    try:
        out = Path(out).resolve()
    except (OSError, ValueError) as exc:
        raise ConfigError("out", f"{out!r} is not a usable folder name ({exc}); choose another --out") from None
    if out in _LOCKS:
        return False
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
    return True


def held_locks() -> set[Path]:
    return set(_LOCKS)


def release_locks(folders=None) -> None:
    """Release this process's locks on ``folders`` (default: all). Temporary files still in a folder then
    are this process's (no other writer held the lock), left by an interrupted write: they are removed. A
    folder lock_folder created and that is still empty is removed, so a refused command leaves no trace."""
    for out in list(_LOCKS) if folders is None else [Path(f).resolve() for f in folders]:
        fd = _LOCKS.pop(out, None)
        if fd is None:
            continue
        _remove_temporaries(out)  # e.g. a signal that landed inside an atomic write's own cleanup
        os.close(fd)
        if out in _CREATED:
            _CREATED.remove(out)
            try:
                out.rmdir()  # only if empty
            except OSError:
                pass


def read_manifest(out: Path) -> dict:
    """The run record of ``out`` ({} when there is none); ConfigError naming the fix when it is damaged."""
    path = Path(out) / "manifest.json"
    if not path.exists():
        return {}
    fix = "rerun with --fresh to recompute the folder, or choose another --out"
    try:
        m = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError("out", f"{path} is damaged (not valid JSON: truncated or edited); {fix}") from None
    except OSError as exc:
        raise ConfigError("out", f"cannot read {path} ({exc.strerror}); {fix}") from None
    stages = m.get("stages") if isinstance(m, dict) else None
    if not isinstance(stages, dict) or not isinstance(m.get("config", {}), dict) or not all(
            isinstance(rec, dict) and all(_str_map(rec.get(k, {})) for k in ("files", "copies"))
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


def _str_map(obj) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items())


@dataclass
class Run:
    out: Path
    config: dict
    fresh: bool = False
    manifest: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        self._owns_lock = lock_folder(self.out)
        _remove_temporaries(self.out)  # atomic writes of a killed process (the lock is ours now)
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
    def stage(self, stage: str, key: str, copies: tuple[str, ...] = ()) -> Iterator[Path]:
        """Run a stage's body in ``OUT/.staging/<stage>/`` (yielded); when it returns normally, that folder
        replaces ``OUT/<stage>/``, the files named in ``copies`` are copied to ``OUT/`` (e.g. verdicts.csv) and
        the stage is recorded complete (key, wall time, file digests). When it raises, the staging folder is
        emptied (but for its ``.partial`` checkpoints) and nothing else changes."""
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
        main = threading.current_thread() is threading.main_thread()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if main else None
        try:  # a signal now waits until the record is written
            self._commit(stage, key, staging, copies, round(time.perf_counter() - start, 2))
        finally:
            if held is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def _commit(self, stage: str, key: str, staging: Path, copies: tuple[str, ...], wall_s: float) -> None:
        """``staging`` replaces ``OUT/<stage>``, ``copies`` go to ``OUT/``, then the manifest is replaced. An error
        on the way (a full disk) restores the earlier folder and record; only a SIGKILL or power cut in these few
        milliseconds can leave new files under the old record's digests (which then refuses them)."""
        shutil.rmtree(staging / PARTIAL, ignore_errors=True)
        files = {str(p.relative_to(staging)): file_digest(p) for p in sorted(staging.rglob("*"))
                 if p.is_file() and not any(part.startswith(".") for part in p.relative_to(staging).parts)}
        record = {"key": key, "complete": True, "wall_s": wall_s, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "files": files, "config_hash": self.manifest["config_hash"]}
        if copies:
            record["copies"] = {name: files[name] for name in copies}
        manifest = {**self.manifest, "stages": {**self.manifest["stages"], stage: record}, "complete": False}
        folder, old = self.out / stage, self.out / STAGING / f"{stage}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        moved = []
        try:
            with atomic_path(self.out / "manifest.json") as manifest_tmp:
                manifest_tmp.write_text(json_text(manifest))
                if folder.exists():
                    os.replace(folder, old)
                    moved.append((old, folder))
                os.replace(staging, folder)
                moved.append((folder, staging))
                for name in copies:
                    with atomic_path(self.out / name) as tmp:
                        shutil.copyfile(folder / name, tmp)
            # the manifest was renamed into place when the block ended
        except BaseException as exc:
            for src, dst in reversed(moved):  # put the earlier stage folder back
                os.replace(src, dst)
            if isinstance(exc, OSError):
                raise ConfigError("out", f"cannot move {staging} to {folder} ({exc.strerror}); choose a writable "
                                         "--out folder") from None
            raise
        shutil.rmtree(old, ignore_errors=True)
        _remove_empty(self.out / STAGING)
        self.manifest = manifest  # until finish() finds every stage of this config done, the folder is incomplete
        self._current.add(stage)

    def close(self) -> None:
        """Release the folder lock if this Run took it (a process's locks also end with the process)."""
        if self._owns_lock:
            release_locks([self.out])
            self._owns_lock = False

    def finish(self, stages: list[str]) -> None:
        """Record whether every stage of this config is complete; the stages verified or computed in this
        process are marked as belonging to this config."""
        for s in self._current:
            self.manifest["stages"][s]["config_hash"] = self.manifest["config_hash"]
        self.manifest["complete"] = all(s in self._current for s in stages)
        self._write()


def _remove_temporaries(out: Path) -> None:
    """Delete the temporary files of atomic writes (``.NAME.XXXX.tmp...``) anywhere under ``out``; only the
    holder of the folder's lock may call this."""
    for stale in out.rglob(".*.tmp*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)


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
