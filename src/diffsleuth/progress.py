"""One progress display for every long-running step (scan, extract, train, eval, audit).

A rich bar on stderr, shown only when stderr is a terminal and the command line was not given
``--quiet``; when piped (CI logs, ``2> file``) nothing is drawn, so logs hold only messages.
Bars opened while another is showing join it as an extra line (rich allows one live display at
a time), so a library function can open its own bar inside a command's.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

T = TypeVar("T")

console = Console(stderr=True)
"""The stderr console of the command line's messages (silent under ``--quiet``); a live bar stays intact."""
error_console = Console(stderr=True)
"""Errors: printed under ``--quiet`` too."""

_active: list[Progress] = []


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bars, and nothing printed through :data:`console` (progress messages, warnings)."""
    console.quiet = quiet


def progress_enabled() -> bool:
    """Whether a bar would show now: stderr is a terminal and ``--quiet`` was not given."""
    return sys.stderr.isatty() and not console.quiet


@contextlib.contextmanager
def progress(description: str, total: int | None, enabled: bool | None = None) -> Iterator[Callable[..., None]]:
    """A bar of ``total`` steps; yields ``advance(n=1, **fields)``. ``enabled=None``: see :func:`progress_enabled`.

    ``fields`` (e.g. ``loss="0.123"``) are shown after the bar, as the last value given.
    """
    if not (progress_enabled() if enabled is None else enabled):
        yield lambda n=1, **fields: None
        return
    if _active:
        bar = _active[-1]
        task = bar.add_task(description, total=total, info="")
        try:
            yield _advancer(bar, task)
        finally:
            bar.remove_task(task)
        return
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                   console=console, transient=True)
    task = bar.add_task(description, total=total, info="")
    _active.append(bar)
    try:
        with bar:
            yield _advancer(bar, task)
    finally:
        _active.pop()


def _advancer(bar: Progress, task) -> Callable[..., None]:
    def advance(n: int = 1, **fields: object) -> None:
        info = "  ".join(f"{k} {v}" for k, v in fields.items())
        bar.update(task, advance=n, **({"info": info} if fields else {}))

    return advance


def track(items: Iterable[T], description: str, total: int | None = None,
          enabled: bool | None = None) -> Iterator[T]:
    """Iterate ``items`` with a bar (``total`` defaults to ``len(items)`` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress(description, total, enabled) as advance:
        for item in items:
            yield item
            advance()


def echo(message: str) -> None:
    """A progress message on stderr (kept above a live bar); silent under ``--quiet``."""
    if not console.quiet:
        console.print(message, highlight=False, markup=False, soft_wrap=True)
