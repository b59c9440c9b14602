"""Run a command in a fresh Python process that records (and refuses) every network call.

A ``sitecustomize`` put first on ``PYTHONPATH`` wraps the socket calls a Python library makes to
reach a host (name resolution, connect, sendto on internet sockets) so that each one is written
to a log and then fails; local IPC (Unix sockets) is left alone. Native code could bypass
Python's socket module, so where ``strace`` is installed the same command also runs under it
and every connect or send to an internet address by the process or its children is reported
(opening a socket is not: libraries probe for IPv6 support with one that never connects).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

GUARD = '''
import os, socket, traceback
_LOG = os.environ["NO_NETWORK_LOG"]

def _refuse(what):
    with open(_LOG, "a") as log:
        log.write(what + "\\n" + "".join(traceback.format_stack(limit=12)) + "\\n")
    raise OSError(101, "network refused by the test: " + what)

def _inet(sock):
    return sock.family in (socket.AF_INET, socket.AF_INET6)

_connect, _connect_ex, _sendto = socket.socket.connect, socket.socket.connect_ex, socket.socket.sendto
socket.getaddrinfo = lambda host, *a, **k: _refuse(f"getaddrinfo {host}")
socket.gethostbyname = lambda host: _refuse(f"gethostbyname {host}")
socket.socket.connect = lambda self, addr: _refuse(f"connect {addr}") if _inet(self) else _connect(self, addr)
socket.socket.connect_ex = lambda self, addr: _refuse(f"connect {addr}") if _inet(self) else _connect_ex(self, addr)
socket.socket.sendto = lambda self, data, *a: _refuse(f"sendto {a}") if _inet(self) else _sendto(self, data, *a)
'''


# --seccomp-bpf: the kernel stops the process only at the traced calls, not at every system call,
# so importing torch under strace costs seconds instead of tens of seconds; children inherit it.
STRACE = ["strace", "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect,sendto,sendmsg,sendmmsg"]


def _strace_works() -> bool:
    """strace is installed, knows --seccomp-bpf and may trace here (containers often forbid ptrace)."""
    return bool(shutil.which("strace")) and subprocess.run(
        [*STRACE, "-o", os.devnull, "true"], capture_output=True).returncode == 0


def run_guarded(args: list[str], tmp: Path, env: dict[str, str] | None = None,
                src: Path | None = None) -> tuple[subprocess.CompletedProcess, str, list[str]]:
    """Run ``python *args`` guarded; returns the result, the Python-level calls refused (the log),
    and the connects/sends to internet addresses strace saw (empty without strace)."""
    guard = tmp / "guard"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(GUARD)
    log = tmp / "network.log"
    source = src or Path(__file__).resolve().parent.parent / "src"
    environment = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    environment.update(env or {})
    environment.update(PYTHONPATH=os.pathsep.join([str(guard), str(source)]), NO_NETWORK_LOG=str(log))
    command = [sys.executable, *args]
    trace = tmp / "strace.txt"
    if _strace_works():
        command = [*STRACE, "-o", str(trace), *command]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    refused = log.read_text() if log.exists() else ""
    sockets = [line for line in trace.read_text().splitlines() if "AF_INET" in line] if trace.exists() else []
    return result, refused, sockets
