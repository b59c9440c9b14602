"""When the model hub may be used: only when the user asks, and then without a retry storm.

A saved detector's ``config.json`` names its backbones, and a folder can come from anyone, so
nothing that loads a backbone contacts the hub by itself: by default huggingface_hub runs in its
offline mode (local folders and the local hub cache only) and the error names the download
command. ``DIFFSLEUTH_HUB_DOWNLOAD=1`` allows downloads for the process; then, before the first
hub load, one TCP connection to the hub (a few seconds at most) decides whether it can be
reached, and if not (or once a load fails for lack of a connection) offline mode is switched on
for the rest of the process instead of huggingface_hub's minutes of retries. A configured
HTTP(S) proxy counts as network.
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
DOWNLOAD_VARIABLE = "DIFFSLEUTH_HUB_DOWNLOAD"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_FALSE = ("0", "", "false", "no", "off")


def downloads_allowed() -> bool:
    """Whether the user allowed model-hub downloads (``DIFFSLEUTH_HUB_DOWNLOAD=1``)."""
    return os.environ.get(DOWNLOAD_VARIABLE, "0").strip().lower() not in _FALSE


def hub_offline() -> bool:
    """Whether the hub's offline mode is on (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "0").strip().lower() not in _FALSE
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _set_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # read at import time; later loads consult the module attribute
        constants.HF_HUB_OFFLINE = True


def go_offline(reason: str) -> None:
    """Switch huggingface_hub to offline mode for this process (also when it is already imported)."""
    if hub_offline():
        return
    log.warning("model hub unreachable (%s): offline mode on, only local folders and cached models load", reason)
    _set_offline()


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
    """Whether hub downloads may be tried: never unless allowed (offline mode is then switched on,
    silently, so no library call reaches the network); else one probe per process."""
    if not downloads_allowed():
        _set_offline()
        return False
    return not hub_offline() and hub_reachable()
