"""Where ``diffsleuth scan`` puts its rows.

CSV and JSON Lines are written row by row as images are scored and flushed at once, so a scan
that is interrupted or killed keeps every row it finished, and ``--resume`` can append the rest.
A table or a JSON list needs all rows, so those two are rendered once at the end, into a
temporary file beside the output that :class:`AtomicOutput` creates before scoring starts (so an
unwritable output fails first, not after the work) and renames over the output at the end.

Paths in rows are :func:`diffsleuth.io.guards.encode_path` text; a CSV field holding CR or LF is
quoted, so every row reads back with Python's csv module as it was written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

from diffsleuth.cli.scan_table import render_table


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    jsonl = "jsonl"

    @property
    def streams(self) -> bool:
        return self in (OutputFormat.csv, OutputFormat.jsonl)


class ScanOutputError(ValueError):
    """An output file cannot be written, or cannot be resumed (unreadable, or other columns)."""


_BY_SUFFIX = {".csv": OutputFormat.csv, ".json": OutputFormat.json, ".jsonl": OutputFormat.jsonl,
              ".ndjson": OutputFormat.jsonl}


def choose_format(fmt: OutputFormat | None, output: Path | None) -> OutputFormat:
    """The format to write: ``--format`` if given, else the output's suffix, else a table on stdout.

    A table is for a terminal: into a file it would be box-drawing characters no program reads
    back, so it is refused, and so is a ``--format`` that contradicts the output's suffix.
    """
    implied = _BY_SUFFIX.get(output.suffix.lower()) if output is not None else None
    if output is None:
        return fmt or OutputFormat.table
    if fmt is OutputFormat.table:
        raise ScanOutputError(f"a table is only printed to the terminal; write {output} as csv, json or jsonl "
                              "(--format, or a name ending in .csv, .json or .jsonl)")
    if fmt is None:
        if implied is None:
            raise ScanOutputError(f"cannot tell the format of {output} from its name: end it in .csv, .json or "
                                  ".jsonl, or give --format csv, json or jsonl")
        return implied
    if implied is not None and implied is not fmt:
        raise ScanOutputError(f"--format {fmt.value} contradicts the name {output} (a {implied.value} name): "
                              "drop --format or rename the output")
    return fmt


class OutputWriteError(OSError):
    """Writing rows failed midway (disk full, closed pipe): what was flushed before is kept."""


def output_problem(output: Path) -> str | None:
    """Why ``output`` cannot be written (checked before any scoring), or None."""
    if output.is_dir():
        return f"{output} is a directory"
    if output.exists() and not os.access(output, os.W_OK):
        return f"{output} is not writable"
    return None


class AtomicOutput:
    """A temporary file beside ``output``, renamed over it by :meth:`commit`; created at once, so
    that an output that cannot be written is refused before any work. Removed if not committed."""

    def __init__(self, output: Path) -> None:
        problem = output_problem(output)
        if problem:
            raise ScanOutputError(problem)
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        except OSError as exc:
            raise ScanOutputError(f"cannot write {output} ({exc.strerror or exc})") from exc
        self.output, self.temporary = output, Path(name)
        self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self, text: str) -> None:
        try:
            with self.stream:
                self.stream.write(text)
                self.stream.flush()
                os.fsync(self.stream.fileno())
            os.replace(self.temporary, self.output)
        except OSError as exc:
            raise OutputWriteError(exc.errno, exc.strerror or str(exc)) from exc

    def discard(self) -> None:
        self.stream.close()
        self.temporary.unlink(missing_ok=True)


def render(rows: Sequence[dict[str, Any]], fmt: OutputFormat, terminal_width: int | None = None) -> str:
    """All rows at once: a JSON list (exact data), or a table for a person (``terminal_width``:
    the terminal's, coloured and folded to fit; None: not a terminal, plain and never folded)."""
    if fmt is OutputFormat.json:
        return json.dumps(list(rows), indent=2) + "\n"
    return render_table(rows, colour=terminal_width is not None, width=terminal_width)


class RowStream:
    """Writes CSV or JSON Lines rows to ``stream`` one at a time, flushing after each.

    ``columns`` fixes the CSV header (the four standard columns plus the detector's extras);
    ``write_header=False`` appends to a file that already has it.
    """

    def __init__(self, stream: TextIO, fmt: OutputFormat, columns: Sequence[str],
                 write_header: bool = True) -> None:
        self.stream = stream
        self.columns = list(columns) if fmt is OutputFormat.csv else None
        if self.columns is not None and write_header:
            self.stream.write(csv_line(dict(zip(self.columns, self.columns)), self.columns))
            stream.flush()

    def write(self, row: dict[str, Any]) -> None:
        try:
            if self.columns is not None:
                self.stream.write(csv_line(row, self.columns))
            else:
                self.stream.write(json.dumps(row) + "\n")
            self.stream.flush()
        except OSError as exc:
            raise OutputWriteError(exc.errno, exc.strerror or str(exc)) from exc


def csv_line(row: dict[str, Any], columns: Sequence[str]) -> str:
    """One CSV record ending in LF; a field with CR or LF in it is quoted.

    Python's writer quotes only the characters of its line terminator, so the record is written
    with CRLF (quoting both) and its terminator then shortened to LF.
    """
    buffer = io.StringIO()
    csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\r\n").writerow(row)
    return buffer.getvalue()[:-2] + "\n"


def complete_length(text: str, fmt: OutputFormat) -> int:
    """Characters of ``text`` up to the end of its last complete row (a killed run may tear the last)."""
    if fmt is not OutputFormat.csv:
        return text.rfind("\n") + 1
    end = 0
    quoted = False
    for match in _CSV_BREAKS.finditer(text):
        if match.group() == '"':
            quoted = not quoted
        elif not quoted:
            end = match.end()
    return end


_CSV_BREAKS = re.compile(r'["\n]')


def drop_torn_tail(path: Path, fmt: OutputFormat = OutputFormat.jsonl) -> None:
    """Cut a last row left unfinished by a killed run, so appended rows start on a line of their own."""
    with path.open("r+", encoding="utf-8", newline="") as handle:
        text = handle.read()
        keep = complete_length(text, fmt)
        if keep < len(text):
            handle.seek(0)
            handle.truncate(len(text[:keep].encode("utf-8")))


def written_rows(path: Path, fmt: OutputFormat, columns: Sequence[str] | None = None) -> set[str]:
    """Row paths that an earlier run already wrote to ``path``; raises if new rows would not fit the
    file (a CSV header other than ``columns``; None: not checked, as before the detector is loaded)."""
    try:
        drop_torn_tail(path, fmt)
        with path.open(encoding="utf-8", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanOutputError(f"{path}: cannot resume from it ({exc})") from exc
    if not text:
        return set()
    if fmt is OutputFormat.csv:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames is None or "path" not in reader.fieldnames or (
                columns is not None and reader.fieldnames != list(columns)):
            writes = "scan rows have a path column" if columns is None else f"this detector writes {list(columns)}"
            raise ScanOutputError(f"{path} has the columns {reader.fieldnames}, {writes}: resume into another --output")
        try:
            return {row["path"] for row in reader}
        except csv.Error as exc:
            raise ScanOutputError(f"{path}, line {reader.line_num}: not a scan row ({exc})") from exc
    done = set()
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        try:
            done.add(json.loads(line)["path"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ScanOutputError(f"{path}, line {number}: not a scan row ({exc})") from exc
    return done
