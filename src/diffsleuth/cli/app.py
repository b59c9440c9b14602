"""The typer application and what every command shares: exit codes and error reporting."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="diffsleuth",
    help="Tell real photos from images made by generative models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True)


def fail_usage(message: str) -> typer.Exit:
    """Print a one-line usage error and return the Exit to raise (code 2)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(EXIT_USAGE)


def progress_enabled() -> bool:
    return sys.stderr.isatty()
