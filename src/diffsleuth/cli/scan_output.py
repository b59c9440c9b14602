"""Where ``diffsleuth scan`` puts its rows.

CSV and JSON Lines are written row by row as images are scored and flushed at once, so a scan
that is interrupted or killed keeps every row it finished, and ``--resume`` can append the rest.
A table or a JSON list needs all rows, so those two are rendered once at the end.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table



class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    jsonl = "jsonl"

    @property
    def streams(self) -> bool:
        return self in (OutputFormat.csv, OutputFormat.jsonl)


class ScanOutputError(ValueError):
    """An existing output file cannot be resumed: unreadable, or written with other columns."""


def render(rows: Sequence[dict[str, Any]], fmt: OutputFormat, colour: bool) -> str:
    """All rows at once, as a JSON list or a table."""
    if fmt is OutputFormat.json:
        return json.dumps(list(rows), indent=2) + "\n"
    table = Table(show_edge=False, header_style="bold")
    for name in ("path", "score", "verdict", "error", "provenance"):
        table.add_column(name, justify="right" if name == "score" else "left", overflow="fold")
    for row in rows:
        score = "" if row["score"] is None else f"{row['score']:.4f}"
        label = row.get("verdict") or row["label"] or ""
        if colour and label:
            label = f"[red]{label}[/]" if label.startswith("generated") else f"[green]{label}[/]"
        error = f"[yellow]{row['error']}[/]" if colour and row["error"] else (row["error"] or "")
        table.add_row(row["path"], score, label, error, escape(row.get("provenance") or ""))
    console = Console(file=io.StringIO(), force_terminal=colour, width=200 if not colour else None)
    console.print(table)
    return console.file.getvalue()


class RowStream:
    """Writes CSV or JSON Lines rows to ``stream`` one at a time, flushing after each.

    ``columns`` fixes the CSV header (the four standard columns plus the detector's extras);
    ``write_header=False`` appends to a file that already has it.
    """

    def __init__(self, stream: TextIO, fmt: OutputFormat, columns: Sequence[str],
                 write_header: bool = True) -> None:
        self.stream = stream
        self.csv = None
        if fmt is OutputFormat.csv:
            self.csv = csv.DictWriter(stream, fieldnames=list(columns), lineterminator="\n")
            if write_header:
                self.csv.writeheader()
                stream.flush()

    def write(self, row: dict[str, Any]) -> None:
        if self.csv is not None:
            self.csv.writerow(row)
        else:
            self.stream.write(json.dumps(row) + "\n")
        self.stream.flush()


def drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a killed run, so appended rows start on a line of their own."""
    with path.open("rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def written_rows(path: Path, fmt: OutputFormat, columns: Sequence[str]) -> set[str]:
    """Paths that an earlier run already wrote to ``path``; raises if new rows would not fit the file."""
    drop_torn_tail(path)
    text = path.read_text(encoding="utf-8")
    if not text:
        return set()
    if fmt is OutputFormat.csv:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames != list(columns):
            raise ScanOutputError(f"{path} has the columns {reader.fieldnames}, this detector writes "
                                  f"{list(columns)}: resume into another --output")
        return {row["path"] for row in reader}
    done = set()
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            done.add(json.loads(line)["path"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ScanOutputError(f"{path}, line {number}: not a scan row ({exc})") from exc
    return done
