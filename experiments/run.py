"""One output folder = one run: its manifest records the config, versions, seed and completed stages.

A stage is recorded as complete only after all its files are written (each atomically), together with
a key hashing exactly the config sections it depends on. A rerun skips a stage whose key is unchanged
and recomputes it otherwise; ``--fresh`` recomputes everything. An interrupted run therefore never
looks finished. The record also holds the SHA-256 of every file the stage wrote: a stage whose files
were since deleted, truncated or edited is not "done" and is recomputed (digests are remembered by
path, size, mtime, ctime and inode, so checking an unchanged 200 MB cooc folder costs no reading).
Temporary files that a killed process left behind are removed when the stage starts again.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sources.errors import ConfigError
from sources.files import git_commit, git_dirty, package_versions, read_json, stable_hash, write_json
from sources.fingerprint import file_digest

log = logging.getLogger(__name__)


@dataclass
class Run:
    out: Path
    config: dict
    fresh: bool = False
    manifest: dict = field(default_factory=dict)

    def __post_init__(self):
        self.out = Path(self.out)
        path = self.out / "manifest.json"
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError("out", f"{self.out} exists and is not a folder; choose another --out")
        old = {}
        if path.exists() and not self.fresh:
            try:
                old = read_json(path)
            except (json.JSONDecodeError, OSError):
                old = {}
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
        # written when a stage starts, so a refused command never overwrites an earlier run's record

    def _write(self) -> None:
        write_json(self.out / "manifest.json", self.manifest, field="out")

    def stage_key(self, *sections: str) -> str:
        return stable_hash({s: self.config.get(s) for s in sections})

    def is_done(self, stage: str, key: str) -> bool:
        rec = self.manifest["stages"].get(stage)
        return bool(rec and rec.get("key") == key and rec.get("complete")) and self.files_intact(stage)

    def files_intact(self, stage: str) -> bool:
        """Whether every file recorded for ``stage`` still exists with the recorded content hash."""
        rec = self.manifest["stages"].get(stage) or {}
        for name, digest in (rec.get("files") or {}).items():
            path = self.out / stage / name
            if not path.is_file() or file_digest(path) != digest:
                log.warning("%s: %s is missing or changed since the stage finished; recomputing the stage", stage, path)
                return False
        return True

    @contextmanager
    def stage(self, stage: str, key: str) -> Iterator[Path]:
        """Run a stage's body; mark it complete (with wall time) only if the body returns normally."""
        folder = self.out / stage
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError("out", f"cannot create {folder} ({exc.strerror}); choose a writable --out folder") from None
        self.manifest["stages"][stage] = {"key": key, "complete": False}
        self._write()
        for stale in folder.rglob(".*.tmp*"):  # left by a killed process (atomic writes use .NAME.XXXX.tmp)
            stale.unlink(missing_ok=True)
        start = time.perf_counter()
        yield folder
        files = {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*"))
                 if p.is_file() and not p.name.startswith(".")}
        self.manifest["stages"][stage] = {"key": key, "complete": True, "wall_s": round(time.perf_counter() - start, 2),
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files}
        self._write()

    def finish(self, stages: list[str]) -> None:
        self.manifest["complete"] = all(self.manifest["stages"].get(s, {}).get("complete") for s in stages)
        self._write()
