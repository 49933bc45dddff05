"""The Hugging Face Hub, asked only when it is reachable.

Without a network, transformers, datasets and sae_lens retry for tens of seconds and print many lines
before failing. :func:`require_hub` instead checks in at most a few seconds whether the Hub's host accepts
a connection and, when it does not, refuses the Hub name with one line saying what to do. With
``HF_HUB_OFFLINE=1`` nothing is checked: the libraries then read their local cache, and a name missing
from it is the usual one-line error.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

from sources.errors import ConfigError

TIMEOUT_S = 3.0


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=None)
def hub_reachable(endpoint: str | None = None) -> bool:
    """Whether the Hub's host accepts a TCP connection within TIMEOUT_S. Behind a proxy, or with an endpoint
    this cannot parse, it answers True and leaves the decision to the libraries."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return True
    try:
        url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        return True
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=TIMEOUT_S):
            return True
    except OSError:
        return False


def require_hub(field: str, what: str, instead: str) -> None:
    """ConfigError at once when ``what`` (a Hub name) cannot be fetched because the Hub is unreachable."""
    if offline_mode() or hub_reachable():
        return
    raise ConfigError(field, f"{what} is on the Hugging Face Hub, which is not reachable from this machine; {instead}, "
                             "or set HF_HUB_OFFLINE=1 to use a copy already in your Hugging Face cache")
