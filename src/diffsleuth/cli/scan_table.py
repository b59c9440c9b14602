"""The terminal table of ``diffsleuth scan``: verdict first, readable at 80 columns, safe to print.

Every cell is built as plain :class:`rich.text.Text` (never parsed as markup) with control
characters made visible (:func:`diffsleuth.progress.terminal_text`), so a file name or a metadata
string can neither break the table nor drive the terminal. A column that is empty in every row is
left out; file names are folded at path separators (then at ``-``, ``_``, ``.`` or a space)
instead of mid-word, so a folded name can still be read and copied. The data in CSV and JSON
files stays exact: this is only what a person reads.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len, chop_cells
from rich.console import Console
from rich.table import Table
from rich.text import Text

from diffsleuth.progress import terminal_text

COLUMNS = ("path", "verdict", "score", "provenance", "error")
_SCORE_WIDTH = 6
_MIN_PATH_WIDTH = 12
_PATH_SHARE = 0.4
"""The share of the width a file name gets when the other columns do not fit beside it unfolded."""
_COLOURS = (("generated", "red"), ("ai-edited", "dark_orange"), ("uncertain", "dark_orange"),
            ("outside", "grey62"), ("no trace", "green"), ("real", "green"))


def display_number(value: float | None) -> str:
    """A score or threshold as shown to a person: four decimals (the data keep every digit)."""
    return "" if value is None else f"{value:.4f}"


def verdict_text(row: dict[str, Any]) -> str:
    """The row's verdict, with the detector's own when it says something else (a claim the pixels
    do not back); a declared generation the pixels also find needs no second word."""
    verdict = row.get("verdict") or row.get("label") or ""
    detector = row.get("detector_verdict")
    if detector and verdict and verdict.split(" (")[0] != detector:
        return f"{verdict} · detector: {detector}"
    return verdict


def verdict_style(verdict: str) -> str:
    """Red for generated, orange for ai-edited and uncertain, grey outside the domain, green for no trace."""
    for start, colour in _COLOURS:
        if verdict.startswith(start):
            return colour
    return ""


def fold_path(path: str, width: int) -> str:
    """``path`` in lines of at most ``width`` cells, broken after ``/`` where it can be, else after
    ``-``, ``_``, ``.`` or a space, and mid-name only for a piece longer than the whole line."""
    lines: list[str] = []
    line = ""
    for part in re.split(r"(?<=/)", path):
        pieces = [part] if cell_len(part) <= width else re.split(r"(?<=[-_. ])", part)
        for piece in filter(None, pieces):
            if cell_len(line) + cell_len(piece) <= width:
                line += piece
                continue
            if line:
                lines.append(line)
            chopped = chop_cells(piece, width) if cell_len(piece) > width else [piece]
            lines.extend(chopped[:-1])
            line = chopped[-1]
    lines.append(line)
    return "\n".join(lines)


def _cells(row: dict[str, Any]) -> dict[str, str]:
    return {"path": str(row.get("path") or ""), "verdict": verdict_text(row), "score": display_number(row.get("score")),
            "provenance": str(row.get("provenance") or ""), "error": str(row.get("error") or "")}


def _path_width(cells: list[dict[str, str]], columns: Sequence[str], width: int) -> int | None:
    """How wide the path column may be for the table to fit ``width``; None when nothing must fold."""
    natural = {name: max(cell_len(c[name]) for c in cells) for name in columns}
    natural = {name: max(value, cell_len(name)) for name, value in natural.items()}
    budget = width - (3 * len(columns) - 1)  # one space each side of a cell, one rule between columns
    if sum(natural.values()) <= budget:
        return None
    others = sum(value for name, value in natural.items() if name != "path")
    share = max(budget - others, int(budget * _PATH_SHARE), _MIN_PATH_WIDTH)
    return min(natural["path"], share)


def render_table(rows: Sequence[dict[str, Any]], colour: bool, width: int | None) -> str:
    """The rows as a table ``width`` cells wide (None: as wide as the rows need, never folded)."""
    cells = [{name: terminal_text(text, newlines=False) for name, text in _cells(row).items()} for row in rows]
    columns = [name for name in COLUMNS if name == "path" or any(c[name] for c in cells)]
    path_width = _path_width(cells, columns, width) if width is not None and cells else None
    thresholds = {row.get("threshold") for row in rows} - {None}
    caption = None
    if len(thresholds) == 1:
        caption = (f"score: the detector's score, 0 to 1 (not a probability); "
                   f"{display_number(thresholds.pop())} or more reads as generated")
    table = Table(show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, justify="right" if name == "score" else "left", overflow="fold",
                         no_wrap=name in ("path", "score"), width=path_width if name == "path" else None)
    for cell in cells:
        if path_width is not None:
            cell["path"] = fold_path(cell["path"], path_width)
        styles = {"verdict": verdict_style(cell["verdict"]), "error": "yellow"} if colour else {}
        table.add_row(*(Text(cell[name], style=styles.get(name, "")) for name in columns))
    render_width = width if width is not None else 1_000_000
    console = Console(file=io.StringIO(), force_terminal=colour, no_color=not colour, width=render_width,
                      markup=False, highlight=False, emoji=False)
    console.print(table, crop=False)
    if caption:
        console.print(caption, style="dim")
    text = console.file.getvalue()
    return text if width is not None else "\n".join(line.rstrip() for line in text.split("\n"))
