"""The probes stage's result: :class:`ProbesResult`, its files under ``OUT/probes/`` and the one reader of them.

Files (each written atomically, ``summary.json`` last, so its presence means the others are complete):

``results.csv``   tidy results, one row per (task, group, arm, metric); see docs/probes.md for the columns
``groups.csv``    enrichment of every candidate group on every target of every task, with a ``selected`` flag
``verdicts.csv``  per (target, group, unit): does grouping help (probes.comparison.verdicts; derived from
                  results.csv, recomputed on load)
``examples.csv``  every task token with its document, character span, token text and labels
``targets.csv``   every probed target's examples and labels: task, target, kind, row (into the task's rows of
                  examples.csv), y, classes; the interventions stage's task effects read these targets out
``windows.npz``   the probe windows run through the model (tokens and content mask of each), which the
                  interventions stage's task effects run on
``summary.json``  dataset sizes, skipped targets and why, selected groups, wins at the FDR level, timings, and
                  ``format_version`` (:data:`FORMAT_VERSION`)
``figures/``      ``<task>_group<id>.png``: PCA of each probed group's reconstruction coloured by the labels, and
                  ``<task>_group<id>.csv``: its points (pc1, pc2, token, document, labels) for the HTML report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from probes.dataset import WINDOWS_FILE, load_windows, save_windows
from sources.errors import ConfigError
from sources.files import SavedResult, atomic_path, read_csv, read_tables, read_versioned, write_json

FORMAT_VERSION = 3
"""Version of the files' layout; :meth:`ProbesResult.load` refuses another (the stage key includes it).
2: targets.csv added. 3: results.csv's family and rank_p columns, groups.csv per target, verdicts.csv."""
HINT = "rerun the probes stage (python -m experiments.probe --fresh, or python -m experiments.steer) with the same --out"

TARGET_COLUMNS = ["task", "target", "kind", "row", "y", "classes"]

Window = tuple[int, int, np.ndarray, np.ndarray]
"""One probe window: (document index, start token, tokens_L, content mask_L)."""


@dataclass
class ProbeFigure:
    """One PCA figure of a probed group: the PNG and the plotted points (pc1, pc2, token, document, labels)."""

    png: bytes = field(repr=False)
    points: pd.DataFrame | None = field(default=None, repr=False)


@dataclass
class ProbesResult(SavedResult):
    """What the probes stage produced (the same content as its files)."""

    results: pd.DataFrame
    """Tidy results (probes.comparison.COLUMNS), BH-adjusted over the run."""
    groups: pd.DataFrame
    """Enrichment of every candidate group on every task (task, group_id, ..., selected, structure)."""
    examples: pd.DataFrame
    """Every task token (task, doc_index, doc_id, char span, token, labels)."""
    windows: dict[str, list[Window]] = field(repr=False)
    """task -> the windows run through the model."""
    summary: dict = field(repr=False)
    figures: dict[str, ProbeFigure] = field(default_factory=dict, repr=False)
    """``<task>_group<id>`` -> its PCA figure."""
    targets: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TARGET_COLUMNS), repr=False)
    """Every probed target's rows and labels (TARGET_COLUMNS; :func:`targets_frame`)."""
    folder: Path | None = None

    def window_lookup(self) -> dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]]:
        """``(task, doc_index, window_start) -> (tokens_L, mask_L)``."""
        return {(task, int(d), int(s)): (t, m) for task, ws in self.windows.items() for d, s, t, m in ws}

    def selected_groups(self) -> pd.DataFrame | None:
        """The enrichment table when it has what group selection needs (task, group_id, enrichment, selected): one row
        per (task, group), the group's most enriched target (groups are selected per target)."""
        g = self.groups
        if not {"task", "group_id", "enrichment", "selected"} <= set(g.columns):
            return None
        g = g.sort_values(["selected", "enrichment"], ascending=[False, False], kind="stable")
        return g.drop_duplicates(["task", "group_id"]).reset_index(drop=True)

    def verdicts(self) -> pd.DataFrame:
        """Per (target, group, unit): does grouping help? (:func:`probes.comparison.verdicts` of the results)."""
        from probes.comparison import verdicts

        return verdicts(self.results, float((self.summary or {}).get("alpha", 0.05)))

    def save(self, folder: str | Path) -> None:
        out = Path(folder)
        for name, df in (("results.csv", self.results), ("groups.csv", self.groups), ("examples.csv", self.examples),
                         ("targets.csv", self.targets)):
            with atomic_path(out / name, "out") as tmp:
                df.to_csv(tmp, index=False)
        with atomic_path(out / "verdicts.csv", "out") as tmp:
            self.verdicts().to_csv(tmp, index=False)
        save_windows(out / WINDOWS_FILE, self.windows)
        for stem, fig in self.figures.items():
            with atomic_path(out / "figures" / f"{stem}.png", "out") as tmp:
                tmp.write_bytes(fig.png)
            if fig.points is not None:
                with atomic_path(out / "figures" / f"{stem}.csv", "out") as tmp:
                    fig.points.to_csv(tmp, index=False)
        write_json(out / "summary.json", {**self.summary, "format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, folder: str | Path) -> "ProbesResult":
        """Read a finished probes stage folder; ConfigError naming the file and the fix otherwise."""
        folder = Path(folder)
        summary = read_versioned(folder / "summary.json", "probes", "probes", FORMAT_VERSION, HINT)
        tables = read_tables(folder, ("results.csv", "groups.csv", "examples.csv", "targets.csv"), "probes", HINT,
                             empty_ok=("examples.csv",), dtype={"group_id": str, "doc_id": str, "classes": str},
                             low_memory=False)
        targets = tables["targets.csv"]
        missing = [c for c in TARGET_COLUMNS if c not in targets]
        if missing:
            raise ConfigError("probes", f"{folder / 'targets.csv'} lacks the column(s) {', '.join(missing)}; {HINT}")
        targets["classes"] = targets["classes"].fillna("")  # regression targets have none
        windows_npz = folder / WINDOWS_FILE
        if not windows_npz.exists():
            raise ConfigError("probes", f"{windows_npz} is missing; {HINT}")
        windows: dict[str, list[Window]] = {}
        for (task, d, s), (t, m) in load_windows(windows_npz).items():
            windows.setdefault(task, []).append((d, s, t, m))
        figures = {}
        for task in (summary.get("tasks") or {}).values():
            for f in ((task or {}).get("figures") or {}).values():
                png = folder / "figures" / str(f.get("path", ""))
                if png.is_file():
                    pts = png.with_suffix(".csv")
                    table = read_csv(pts, "probes", HINT, dtype={"group_id": str, "doc_id": str}) if pts.exists() else None
                    figures[png.stem] = ProbeFigure(png.read_bytes(), table)
        return cls(tables["results.csv"], tables["groups.csv"], tables["examples.csv"], windows, summary, figures,
                   targets, folder)


def targets_frame(task: str, targets) -> pd.DataFrame:
    """One row per (target, example) of a task's :class:`probes.comparison.Target` list (TARGET_COLUMNS)."""
    parts = [pd.DataFrame({"task": task, "target": t.task, "kind": t.kind, "row": np.asarray(t.rows, dtype=np.int64),
                           "y": np.asarray(t.y, dtype=np.float64), "classes": "|".join(t.classes)}) for t in targets]
    return pd.concat(parts, ignore_index=True)[TARGET_COLUMNS] if parts else pd.DataFrame(columns=TARGET_COLUMNS)
