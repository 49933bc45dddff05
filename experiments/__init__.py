"""Experiment drivers: YAML configs and the ``python -m experiments.<stage>`` entry points.

Started as ``python -m experiments.<stage>``, a Ctrl-C or SIGTERM that arrives while the heavy imports
(torch, transformers) still load ends the process with one line; once the entry point runs,
:func:`experiments.cli.entry_point` handles both signals itself (temporary files removed, resumable).
"""

import os
import signal
import sys


def _while_starting(signum, frame):  # pragma: no cover - exercised by subprocess tests
    word = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    sys.stderr.write(f"{word} while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(143 if signum == signal.SIGTERM else 130)


if sys.argv[:1] == ["-m"]:  # imported by ``python -m experiments.<stage>`` (runpy sets argv[0] later)
    signal.signal(signal.SIGTERM, _while_starting)
    signal.signal(signal.SIGINT, _while_starting)
