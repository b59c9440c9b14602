"""Fail fast when the model hub cannot be reached, instead of a retry storm.

Without a network huggingface_hub retries each file with back-off (about 24 s per file, several
files per model), only to fail. Before the first hub load we try one TCP connection to the hub
(a few seconds at most); if it fails, or once any load fails for lack of a connection, the hub's
offline mode is switched on for the rest of the process: cached models still load, missing ones
fail at once. ``HF_HUB_OFFLINE=1`` skips the probe. A configured HTTP(S) proxy counts as network.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import sys
from urllib.parse import urlparse

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_offline() -> bool:
    """Whether the hub's offline mode is on (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "0").strip().lower() not in ("0", "", "false", "no", "off")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def go_offline(reason: str) -> None:
    """Switch huggingface_hub to offline mode for this process (also when it is already imported)."""
    if hub_offline():
        return
    log.warning("model hub unreachable (%s): offline mode on, only local folders and cached models load", reason)
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # read at import time; later loads consult the module attribute
        constants.HF_HUB_OFFLINE = True


@functools.cache
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub endpoint (``HF_ENDPOINT``); True when a proxy is configured."""
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        go_offline(f"{url.hostname}:{port}: {exc.strerror or exc}")
        return False
    return True


def check_hub() -> bool:
    """Probe once per process unless offline already; returns whether hub downloads may be tried."""
    return not hub_offline() and hub_reachable()
