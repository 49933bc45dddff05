"""What a probe task is: how its examples are found in text, their targets, and how the report shows them.

A task is one module of ``probes/tasks/`` defining a :class:`Task` subclass, and one entry of the registry
(``probes/tasks/__init__.py``); config names (``probes.tasks``, ``interventions.tasks.tasks``), the probes stage,
the interventions stage's task effects and the report all take the task from the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from probes.comparison import Target
from probes.documents import Doc


def target_rng(seed: int) -> np.random.Generator:
    """The generator a task's :meth:`Task.targets` draws from (e.g. class balancing) for an experiment seed."""
    return np.random.default_rng([int(seed), 7])


@dataclass
class Selection:
    """A task's examples in the scanned documents."""

    docs: list[Doc]
    """Chosen documents with their task tokens (``Doc.rows``)."""
    n_candidates: int
    """Documents that held any candidate (for the report and the 'nothing found' message)."""
    report: dict = field(default_factory=dict)
    """More entries for the task's section of OUT/probes/summary.json."""


class Task:
    name: ClassVar[str] = ""
    """The config name, e.g. ``url_position``; targets are named ``<name>/<target>``."""
    noun: ClassVar[str] = ""
    """What an example is, for messages: "no <noun> found in the scanned documents"."""
    spec: ClassVar[type | None] = None
    """The task's config section (a ``sources.config.Section``), at ``probes.<name>``; None: it has none."""
    figure_columns: ClassVar[tuple[str, ...]] = ()
    """Columns of examples.csv copied beside each PCA figure (after doc_id and token)."""
    scatter_columns: ClassVar[tuple[str, ...]] = ()
    """Columns the report's interactive scatter can colour by (the first also labels the explorer's points)."""

    def select(self, docs, tokenizer, probes_cfg, rng: np.random.Generator) -> Selection:
        """Find candidates in the documents' text and take a seeded sample of at most ``probes.max_tokens`` tokens."""
        raise NotImplementedError

    def finish(self, examples: pd.DataFrame) -> pd.DataFrame:
        """Columns that need the probe windows (``_visible_from``: first character the model sees); in place."""
        return examples

    def targets(self, examples: pd.DataFrame, probes_cfg, rng: np.random.Generator) -> tuple[list[Target], list[tuple[str, str]]]:
        """Targets with enough data, and ``(target, reason)`` for those without."""
        raise NotImplementedError

    def late_hook(self, cfg, model):
        """A later site whose activations :meth:`model_targets` needs (``sources.config.HookSpec``), or None."""
        return None

    def model_targets(self, data, targets: list[Target], probes_cfg, seed: int) -> tuple[list[Target], list[tuple[str, str]]]:
        """Targets derived from the model itself (e.g. a later layer's readout), from the dataset (``data``:
        ``probes.dataset.ProbeData``) and the text targets; default none."""
        return [], []

    def reads_out(self, target: str) -> bool:
        """Whether the interventions stage reads out this target (task effects); default: every target."""
        return True

    def readout_targets(self, examples: pd.DataFrame, probes_cfg, seed: int = 0) -> list[Target]:
        """The targets the interventions stage reads out, recomputed from the examples as the probes stage computes
        them (the stage itself reads them from the probes stage's saved targets, ProbesResult.targets)."""
        targets, _ = self.targets(examples, probes_cfg, target_rng(seed))
        return [t for t in targets if self.reads_out(t.task)]

    def panels(self, examples: pd.DataFrame, targets: list[Target]) -> list[tuple[str, np.ndarray, str]]:
        """PCA figure panels: ``(title, values per example, "continuous" | "categorical")``."""
        raise NotImplementedError

    def hover(self, points: pd.DataFrame) -> list[str]:
        """One line per example for the report's interactive scatter."""
        return [str(t) for t in points.get("token", [""] * len(points))]


def too_few(counts: dict[str, int], docs, min_per_class: int, n_folds: int) -> str:
    """Why a classification target cannot be probed ('' when it can)."""
    low = [f"{c} {s}" for s, c in counts.items() if c < min_per_class]
    if low:
        return f"too few examples: {', '.join(low)} (need {min_per_class} of each class)"
    if len(np.unique(docs)) < n_folds:
        return f"only {len(np.unique(docs))} documents for {n_folds} document-grouped folds"
    return ""
