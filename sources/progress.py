"""Progress bars for every loop that can take more than a few seconds.

One place decides whether a bar is shown: never with ``progress=False`` (the ``--quiet`` flag), never
when the environment variable ``CI`` is set (CI logs), and never when stderr is not a terminal
(redirected logs stay readable). ``COOC_PROGRESS=1`` forces bars on, e.g. under ``nohup ... 2> log``.
Bars show counts, rates and an ETA when the total is known.
"""

from __future__ import annotations

import os
import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def bars_enabled(progress: bool = True) -> bool:
    """Whether a progress bar should be drawn (see the module docstring for the rules)."""
    if not progress:
        return False
    forced = os.environ.get("COOC_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if os.environ.get("CI"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress_bar(iterable: Iterable[T] | None = None, *, progress: bool = True, desc: str = "", unit: str = "it",
                 total: float | None = None, mininterval: float = 1.0) -> tqdm:
    """A tqdm bar, disabled according to :func:`bars_enabled`."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not bars_enabled(progress),
                mininterval=mininterval, dynamic_ncols=True)
