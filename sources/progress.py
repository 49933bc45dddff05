"""Progress bars for every loop that can take more than a few seconds.

One place decides whether a bar is shown: never with ``progress=False`` (the ``--quiet`` flag), never
when the environment variable ``CI`` is set (CI logs), and never when stderr is not a terminal
(redirected logs stay readable). ``COOC_PROGRESS=1`` forces bars on, e.g. under ``nohup ... 2> log``.
Bars show counts, rates and an ETA when the total is known.

Test hook (interruption tests only): ``COOC_KILL_AT=NAME:N`` makes the process send itself SIGKILL, like
a power cut or the OOM killer (no cleanup, no ``finally``, no atexit), right after the N-th step of the
bars whose description starts with NAME: ``stream`` (a batch of activations computed and, with
``stream.cache``, written to the cache), ``cooc`` (a batch of latents counted), ``probe`` (a batch of
probe windows through the model), ``interventions`` (one forward pass of a group's arms). Every loop
that can take long has a bar, shown or not, so this reaches every stage deterministically. One finer name
is counted besides the bars: ``group K forward`` (one forward pass of the K-th group of the interventions
stage, K = 1, 2, ... in the order of the selected groups), e.g. ``COOC_KILL_AT="group 2 forward:1"`` kills
in the second group, after the first group's checkpoint was written (NAME is matched as a prefix, so
``group 1 forward`` does not match group 10 and plain ``group`` counts the forwards of every group).
"""

from __future__ import annotations

import contextlib
import os
import signal
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
    cls = _KillingBar if os.environ.get(KILL_ENV) else tqdm
    return cls(iterable, total=total, desc=desc, unit=unit, disable=not bars_enabled(progress),
               mininterval=mininterval, dynamic_ncols=True)


KILL_ENV = "COOC_KILL_AT"
_steps: dict[str, int] = {}


def kill_point(desc: str) -> None:
    """Count one step of the bar ``desc``; SIGKILL this process at the step ``COOC_KILL_AT`` names."""
    target = os.environ.get(KILL_ENV, "")
    name, _, n = target.partition(":")
    if not name or not desc.startswith(name):
        return
    _steps[name] = _steps.get(name, 0) + 1
    if str(_steps[name]) == n.strip():
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class _KillingBar(tqdm):
    """A tqdm bar that calls :func:`kill_point` after every step (only while COOC_KILL_AT is set)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._kill_desc = kwargs.get("desc", "")
        self._iterating = False

    def update(self, n=1):
        out = super().update(n)
        if not self._iterating:  # tqdm's own __iter__ calls update now and then: count items there instead
            kill_point(self._kill_desc)
        return out

    def __iter__(self):
        self._iterating = True
        for item in super().__iter__():
            yield item
            kill_point(self._kill_desc)


def third_party_bars(progress: bool = True) -> None:
    """Switch the progress bars of transformers and huggingface_hub (weight loading, GGUF conversion) on or
    off by the same rule as ours, so ``--quiet`` and CI logs stay free of them."""
    from transformers.utils import logging as hf_logging

    global _third_party_on
    _third_party_on = bars_enabled(progress)
    if _third_party_on:
        hf_logging.enable_progress_bar()
    else:
        hf_logging.disable_progress_bar()
    try:
        import huggingface_hub.utils as hub_utils

        (hub_utils.enable_progress_bars if _third_party_on else hub_utils.disable_progress_bars)()
    except (ImportError, AttributeError):  # pragma: no cover - older huggingface_hub
        pass


_third_party_on = True


@contextlib.contextmanager
def third_party_quiet():
    """Hide what a library prints on stderr (a plain tqdm bar with no switch, e.g. transformers' GGUF
    conversion) while third-party bars are off. Log records still appear: logging handlers keep their
    own reference to the real stderr."""
    if _third_party_on:
        yield
        return
    with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        yield

