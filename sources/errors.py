"""User-facing errors: one message naming the field, the bad value and the fix.

Every stage raises :class:`ConfigError` for bad input; the command-line entry points
in ``experiments`` turn it into a single line on stderr and exit code 2.
"""

from __future__ import annotations

EXIT_USAGE = 2
RECOMPUTE = "rerun python -m experiments.steer with the run's config and the same --out to recompute it"
"""The fix for a run file that was changed, truncated or emptied since its stage recorded it."""


class ConfigError(Exception):
    """Bad configuration or input, reported without a traceback.

    ``field`` is the dotted config path (``sae.path``, ``hook.layer``) or the input
    it concerns; ``message`` says what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class FormatError(ConfigError):
    """A stage's saved files are in another format version than this version of the framework reads."""


def format_validation_error(exc) -> ConfigError:
    """Turn a pydantic ValidationError into one ConfigError naming the first bad field."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    loc = loc or "config"
    kind = first.get("type", "")
    value = first.get("input")
    if kind == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling (see the allowed keys in docs/config.md)"
    elif kind == "missing":
        msg = "required field is missing"
    else:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        text = first.get("msg", "invalid value")
        text = text.removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        msg = f"{text} (got {shown})"
    more = f" [and {len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    return ConfigError(loc, msg + more)
