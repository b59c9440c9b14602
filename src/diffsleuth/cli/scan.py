"""``diffsleuth scan``: score image files with a detector, one row per input."""

from __future__ import annotations

import csv
import io
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from diffsleuth.cli.app import EXIT_OK, EXIT_PARTIAL, app, err_console, fail_usage, progress_enabled
from diffsleuth.detectors.base import WeightsError
from diffsleuth.detectors.registry import load_detector
from diffsleuth.detectors.scanning import ScanResult, scan_paths
from diffsleuth.devices import resolve_device, resolve_dtype
from diffsleuth.io.datasets import expand_inputs
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS

COLUMNS = ["path", "score", "label", "error"]


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def render(rows: list[dict], fmt: OutputFormat, colour: bool) -> str:
    if fmt is OutputFormat.json:
        return json.dumps(rows, indent=2) + "\n"
    if fmt is OutputFormat.csv:
        buffer = io.StringIO()
        extra = sorted({k for row in rows for k in row} - set(COLUMNS))
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS + extra, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()
    table = Table(show_edge=False, header_style="bold")
    for name in COLUMNS:
        table.add_column(name, justify="right" if name == "score" else "left", overflow="fold")
    for row in rows:
        score = "" if row["score"] is None else f"{row['score']:.4f}"
        label = row["label"] or ""
        if colour and label:
            label = f"[red]{label}[/]" if label == "generated" else f"[green]{label}[/]"
        error = f"[yellow]{row['error']}[/]" if colour and row["error"] else (row["error"] or "")
        table.add_row(row["path"], score, label, error)
    console = Console(file=io.StringIO(), force_terminal=colour, width=200 if not colour else None)
    console.print(table)
    return console.file.getvalue()


@app.command()
def scan(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs.")],
    detector: Annotated[Optional[str], typer.Option(
        "--detector", "-d", help="Shipped model name or a saved detector folder [default: the shipped default].")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = OutputFormat.table,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write results to this file.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")] = "auto",
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this (decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    summary: Annotated[bool, typer.Option("--summary", help="Print counts per label to stderr.")] = False,
) -> None:
    """Score images: probability that each was generated, one row per input.

    Exit codes: 0 every input scored; 3 some inputs could not be read (their rows carry the
    error, the rest are scored); 2 usage error (bad option, no inputs, unknown detector).
    """
    files = expand_inputs(paths)
    if not files:
        raise fail_usage(f"no image files found in {', '.join(paths)}")
    try:
        torch_device = resolve_device(device)
        dtype = resolve_dtype(torch_device, precision)
        model = load_detector(detector, device=torch_device, dtype=dtype)
    except (ValueError, KeyError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    except WeightsError as exc:
        raise fail_usage(str(exc)) from exc

    results: list[ScanResult] = []
    with Progress(TextColumn("scanning"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err_console, disable=not progress_enabled(), transient=True) as bar:
        task = bar.add_task("scan", total=len(files))
        for result in scan_paths(model, files, batch_size=batch_size, max_pixels=max_pixels,
                                 on_progress=lambda n: bar.advance(task, n)):
            results.append(result)

    rows = [r.as_row() for r in results]
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render(rows, fmt, colour=False), encoding="utf-8")
        err_console.print(f"wrote {len(rows)} rows to {output}")
    else:
        sys.stdout.write(render(rows, fmt, colour=sys.stdout.isatty()))
    failed = sum(1 for r in results if r.error)
    if summary:
        generated = sum(1 for r in results if r.label == "generated")
        err_console.print(f"{len(results)} inputs: {generated} generated, "
                          f"{len(results) - generated - failed} real, {failed} unreadable")
    if failed:
        err_console.print(f"[yellow]{failed} of {len(results)} inputs could not be scored[/]")
    raise typer.Exit(EXIT_PARTIAL if failed else EXIT_OK)
