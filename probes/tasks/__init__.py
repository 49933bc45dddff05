"""The probe task registry: one module per task (``probes/tasks/<name>.py``), one entry here.

Adding a task: write a module with a :class:`probes.tasks.base.Task` subclass (how its examples are found in text,
its targets, its figure panels, its config section) and add its ``TASK`` to :data:`TASKS`. Config task names
(``probes.tasks``, ``interventions.tasks.tasks``), the probes stage, the interventions stage's task effects and the
report take tasks from here.
"""

from __future__ import annotations

from probes.tasks import quotation, url_position, word_sense
from probes.tasks.base import Selection, Task

TASKS: dict[str, Task] = {t.name: t for t in (url_position.TASK, word_sense.TASK, quotation.TASK)}


def get_task(name: str) -> Task:
    """The registered task called ``name`` (config validation has checked it)."""
    from sources.errors import ConfigError

    if name not in TASKS:
        raise ConfigError("probes.tasks", f"unknown task {name!r}; registered: {', '.join(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "Selection", "Task", "get_task"]
