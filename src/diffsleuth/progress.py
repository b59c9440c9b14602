"""One progress display for every long-running step (scan, extract, train, eval, audit).

A rich bar on stderr, shown only when stderr is a terminal and the command line was not given
``--quiet``; when piped (CI logs, ``2> file``) nothing is drawn, so logs hold only messages.
Bars opened while another is showing join it as an extra line (rich allows one live display at
a time), so a library function can open its own bar inside a command's.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

T = TypeVar("T")

_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_UNSAFE_IN_CELLS = re.compile(_UNSAFE.pattern[:-1] + "\t\n]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def terminal_text(text: str, newlines: bool = True) -> str:
    """``text`` with every control character a terminal would act on written as a visible escape.

    ESC, BEL, NUL, CR, the C1 controls and the bidirectional overrides (U+202E...) become ``\\x1b``,
    ``\\u202e`` and the like, so a file name or metadata text cannot move the cursor, recolour,
    retitle or reorder what is shown. Tab and newline are kept unless ``newlines`` is False (table cells).
    Only for display: files get the text exactly.
    """
    def visible(match: re.Match[str]) -> str:
        character = match.group()
        code = ord(character)
        return _NAMED.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")

    return (_UNSAFE if newlines else _UNSAFE_IN_CELLS).sub(visible, text)


class MessageConsole(Console):
    """A stderr console for messages built from untrusted text (file names, metadata, errors).

    Text is printed as it is: never parsed as rich markup (a name holding ``[/]`` or
    ``[bold red]`` is shown, not obeyed or fatal; style a whole message with ``style=``, or pass
    a :class:`rich.text.Text`), never highlighted, its control characters made visible
    (:func:`terminal_text`), and not hard-wrapped when stderr is not a terminal, so that a path in
    a log stays on one line and can be copied.
    """

    def __init__(self) -> None:
        super().__init__(stderr=True, markup=False, highlight=False, emoji=False)

    def print(self, *objects: Any, soft_wrap: bool | None = None, **kwargs: Any) -> None:  # type: ignore[override]
        safe = [terminal_text(item) if isinstance(item, str) else item for item in objects]
        super().print(*safe, soft_wrap=(not self.is_terminal) if soft_wrap is None else soft_wrap, **kwargs)


console = MessageConsole()
"""The stderr console of the command line's messages (silent under ``--quiet``); a live bar stays intact."""
error_console = MessageConsole()
"""Errors: printed under ``--quiet`` too."""


def error_line(message: str, label: str = "error:") -> Text:
    """``error: <message>`` with the label in bold red and the message as plain text."""
    return Text.assemble((label, "bold red"), " ", terminal_text(message))

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
        console.print(message)
