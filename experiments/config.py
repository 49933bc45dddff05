"""The experiment config: one YAML file, one pydantic model, one section per stage.

``experiments/configs/default.yaml`` is what ``python -m experiments.steer`` runs with no arguments.
Each section's model lives with the code that uses it (``sources.config``, ``cooc.config``, ...);
this module only composes them, so the YAML schema and the code cannot drift apart.
"""

from __future__ import annotations

from pydantic import Field

from cooc.config import CoocConfig
from interventions.config import InterventionsConfig
from probes.config import ProbesConfig
from reports.config import ReportConfig
from sources.config import ActivationsSpec, DataSpec, HookSpec, ModelSpec, SAESpec, Section, Seed, StreamSpec


class ExperimentConfig(Section):
    seed: Seed = 0
    """Seed for every random choice (controls, splits, bootstrap)."""
    out: str = "runs/default"
    """Output folder; --out overrides it."""
    model: ModelSpec = ModelSpec()
    hook: HookSpec = HookSpec()
    sae: SAESpec = SAESpec()
    data: DataSpec = DataSpec()
    stream: StreamSpec = StreamSpec()
    activations: ActivationsSpec = ActivationsSpec()
    cooc: CoocConfig = Field(default_factory=CoocConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    interventions: InterventionsConfig = Field(default_factory=InterventionsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)


    def session(self, progress: bool = True, dtype: str | None = None):
        """The :class:`sources.session.Session` of this experiment's model, SAE, hook, corpus and stream; with
        ``dtype`` (other than model.dtype), the same SAE with the model computing in that dtype."""
        from sources.session import open_session, with_dtype

        session = open_session(self.model, self.sae, self.hook, self.data, self.stream, progress=progress)
        return session if dtype in (None, self.model.dtype) else with_dtype(session, self.model, dtype, progress)
