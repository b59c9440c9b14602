"""Kill the processes of a local Ray when the command that started it dies, even by ``kill -9``.

Ray ties gcs_server and raylet to the driver (the kernel kills them with it), but the agents the
raylet starts (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive a driver killed with
SIGKILL, for minutes or for good. :func:`start_reaper` runs this module as a small watcher
before ``ray.init``: it holds the read end of a pipe whose write end only the driver has, notes
every process descending from the driver twice a second (pid and start time, read from
``/proc``), and when the pipe closes (the driver is gone, however it went) it kills the ones
still running. Linux only (``/proc``); elsewhere nothing is started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 0.5


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every process visible in ``/proc``."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (name) ": state, ppid, ...
        table[int(entry.name)] = (int(fields[1]), fields[19])
    return table


def descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below ``root`` now."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid][1]
        todo.extend(children.get(pid, []))
    return found


def watch(driver: int, pipe: int = 0) -> None:
    """Note the driver's descendants until ``pipe`` closes, then kill those still running (the
    same pid with the same start time: a reused pid is left alone)."""
    seen: dict[int, str] = {}
    while True:
        seen.update(descendants(driver))
        ready, _, _ = select.select([pipe], [], [], POLL_S)
        if ready and not os.read(pipe, 4096):
            break
    seen.pop(os.getpid(), None)
    alive = _processes()
    for pid, started in seen.items():
        if pid in alive and alive[pid][1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def start_reaper() -> subprocess.Popen | None:
    """Start the watcher for this process (None where there is no ``/proc``). Keep the returned
    object alive: its stdin is the pipe; closing it (or dying) sets the watcher off."""
    if not Path("/proc/self/stat").is_file():
        return None
    # This file as a script, isolated (-I): the standard library only, no torch, in a few ms.
    return subprocess.Popen([sys.executable, "-I", __file__, str(os.getpid())], stdin=subprocess.PIPE,
                            start_new_session=True, close_fds=True)


def stop_reaper(reaper: subprocess.Popen | None) -> None:
    """After a clean ``ray.shutdown``: close the pipe and wait for the watcher to finish."""
    if reaper is not None and reaper.stdin is not None:
        reaper.stdin.close()
        try:
            reaper.wait(timeout=10)
        except subprocess.TimeoutExpired:
            reaper.kill()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    watch(int(sys.argv[1]))
