"""The interventions stage's result: :class:`InterventionsResult`, its files under ``OUT/interventions/`` and the
one reader of them.

Files (each written atomically, ``summary.json`` last; see docs/interventions.md for columns):

``effects.csv``          tidy effects, one row per (group, arm, mode, alpha, effect, scope), BH-adjusted over the run
``effect_verdicts.csv``  one row per (group, mode, effect): the group against its best single latent and controls
``additivity.csv``       non-additivity: per (group, mode, signed effect) the group vs the sum of its members' effects
``arms.csv``             what every arm edits, including the drawn control latents
``population.csv``       with groups: sample, the fractions of the sampled groups answering each question
``summary.json``         the primary comparison, tasks, per-group token counts and documents, ``format_version``
``steering.png``         dose-response of the steering arms (when steering ran)
``verdicts.csv``         one row per group (the stage copies it to ``OUT/verdicts.csv``)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sources.files import SavedResult, atomic_path, read_tables, read_versioned, write_json

FORMAT_VERSION = 4
"""Version of the files' layout; :meth:`InterventionsResult.load` refuses another (the stage key includes it).
2: the ``other`` scope holds only unedited tokens at or after each context's first edited position. 3: effects.csv's
``family`` column (BH within primary, secondary and arm-vs-clean rows). 4: controls at the group's tokens (co-firing
latents, random spans), every member tried and the best single chosen per effect, control draws resampled in the
bootstrap, the non-additivity family and additivity.csv."""
HINT = "rerun python -m experiments.interventions (or python -m experiments.steer) with the same --out and --fresh"
TABLES = ("effects.csv", "arms.csv", "verdicts.csv")


@dataclass
class InterventionsResult(SavedResult):
    """What the interventions stage produced. The tables and the summary are saved; ``evals`` and ``tasks`` are
    the in-memory evaluations they were computed from (empty after :meth:`load`)."""

    effects: pd.DataFrame
    """Tidy effects (interventions.effects.EFFECTS_COLUMNS), BH-adjusted over the run."""
    verdicts: pd.DataFrame
    """One row per group (stats.VERDICT_COLUMNS)."""
    arms: pd.DataFrame
    """What every arm edits (interventions.pipeline.ARMS_COLUMNS), including the drawn control latents."""
    effect_verdicts: pd.DataFrame | None = None
    """One row per (group, mode, effect) at the group's tokens (stats.EFFECT_VERDICT_COLUMNS)."""
    summary: dict = field(default_factory=dict, repr=False)
    """n_groups, the primary comparison, alpha, n_boot, read_layer, tasks and one entry per evaluated group."""
    evals: list = field(default_factory=list, repr=False, compare=False)
    """The :class:`interventions.arms.GroupEval` of every group that fired (not saved)."""
    tasks: list = field(default_factory=list, repr=False, compare=False)
    """The task data used (interventions.tasks.TaskData, with the readouts' clean quality; not saved)."""
    folder: Path | None = None
    additivity: pd.DataFrame | None = None
    """The non-additivity table (interventions.effects.ADDITIVITY_COLUMNS)."""
    population: pd.DataFrame | None = None
    """With groups: sample, the population fractions (interventions.population.POPULATION_COLUMNS)."""

    @property
    def read_layer(self) -> int | None:
        return self.summary.get("read_layer")

    def save(self, folder: str | Path) -> None:
        """Write the files into ``folder`` (``summary.json`` last; optional files of an earlier save removed)."""
        out = Path(folder)
        with atomic_path(out / "effects.csv") as tmp:
            self.effects.to_csv(tmp, index=False)
        with atomic_path(out / "arms.csv") as tmp:
            self.arms.to_csv(tmp, index=False)
        (out / "effect_verdicts.csv").unlink(missing_ok=True)
        if self.effect_verdicts is not None:
            with atomic_path(out / "effect_verdicts.csv") as tmp:
                self.effect_verdicts.to_csv(tmp, index=False)
        (out / "steering.png").unlink(missing_ok=True)
        if (self.effects["mode"] == "steer").any():
            from interventions.markdown import plot_dose_response

            with atomic_path(out / "steering.png") as tmp:
                plot_dose_response(self.effects, tmp)
        (out / "additivity.csv").unlink(missing_ok=True)
        if self.additivity is not None:
            with atomic_path(out / "additivity.csv") as tmp:
                self.additivity.to_csv(tmp, index=False)
        (out / "population.csv").unlink(missing_ok=True)
        if self.population is not None:
            with atomic_path(out / "population.csv") as tmp:
                self.population.to_csv(tmp, index=False)
        with atomic_path(out / "verdicts.csv") as tmp:
            self.verdicts.to_csv(tmp, index=False)
        write_json(out / "summary.json", {**self.summary, "format_version": FORMAT_VERSION})

    @classmethod
    def load(cls, folder: str | Path) -> "InterventionsResult":
        """Read a finished interventions stage folder; ConfigError naming the file and the fix otherwise."""
        folder = Path(folder)
        summary = read_versioned(folder / "summary.json", "interventions", "interventions", FORMAT_VERSION, HINT)
        tables = read_tables(folder, (*TABLES, "effect_verdicts.csv", "additivity.csv", "population.csv"), "interventions",
                             HINT, optional=("effect_verdicts.csv", "additivity.csv", "population.csv"),
                             dtype={"group_id": str, "best_single_latents": str, "latents": str})
        arms = tables["arms.csv"]
        if "latents" in arms:
            arms["latents"] = arms["latents"].fillna("")  # arms that edit no latent (directions, steering)
        return cls(tables["effects.csv"], tables["verdicts.csv"], arms, tables["effect_verdicts.csv"],
                   summary, folder=folder, additivity=tables["additivity.csv"], population=tables["population.csv"])
