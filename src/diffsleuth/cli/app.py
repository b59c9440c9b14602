"""The typer application and what every command shares: exit codes, error reporting, logging.

Command modules import their heavy libraries (torch, diffusers, Ray, matplotlib) inside the
command functions, so ``diffsleuth --help`` and ``diffsleuth scan --help`` start without them.
Help is rendered as plain text (``rich_markup_mode=None``): brackets such as
``[default: the shipped default]`` in a help string are shown verbatim, not eaten as markup.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from diffsleuth import __version__
from diffsleuth.extras import MissingExtraError
from diffsleuth.progress import console as err_console
from diffsleuth.progress import error_console, error_line, progress_enabled, set_quiet

__all__ = [
    "EXIT_FLAGGED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_PARTIAL", "EXIT_USAGE", "PlainHelpGroup",
    "app", "configure_logging", "err_console", "error_console", "fail_backbone", "fail_usage", "progress_enabled",
    "third_party_level",
]

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_FLAGGED = 4
EXIT_INTERRUPTED = 130

THIRD_PARTY_LOGGERS = ("ray", "transformers", "diffusers", "huggingface_hub", "onnxruntime", "accelerate",
                       "open_clip", "urllib3", "httpx", "filelock", "PIL", "matplotlib")
_verbosity = {"level": 0}

# Plain click-style names instead of typer's "<str>", "<int range>" type labels.
_METAVARS = {"str": "TEXT", "int": "INTEGER", "int range": "INTEGER", "float": "NUMBER", "float range": "NUMBER",
             "path": "PATH", "file": "PATH", "directory": "PATH"}


class _PlainArgument(TyperArgument):
    """An argument whose help line shows its name only (no "<list[str]>" type label)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None


class PlainHelpGroup(TyperGroup):
    """Gives every option a click-style metavar (TEXT, INTEGER, PATH, [a|b]) when a command is looked up,
    and turns a missing optional extra into a usage error (exit 2) that says what to install."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except MissingExtraError as exc:
            raise fail_usage(str(exc)) from exc

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        for param in getattr(command, "params", []):
            if isinstance(param, TyperArgument) and param.metavar is None:
                param.metavar = param.name.upper()
                param.__class__ = _PlainArgument
            elif (isinstance(param, TyperOption) and param.metavar is None and hasattr(param, "display_type")
                  and not (param.is_flag or param.count)):
                label = param.display_type(ctx)[1:-1]
                bare = label.lower().removeprefix("list[").removesuffix("]")
                param.metavar = f"[{label}]" if "|" in label else _METAVARS.get(bare, "VALUE")
        return command


app = typer.Typer(
    name="diffsleuth",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=PlainHelpGroup,
)


class MessageHandler(logging.Handler):
    """Log records as one message each on the error console: shown as written, never wrapped off a
    terminal (see :class:`diffsleuth.progress.MessageConsole`), coloured by level on one."""

    _STYLES = {logging.WARNING: "yellow", logging.ERROR: "red", logging.CRITICAL: "bold red"}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            error_console.print(self.format(record), style=self._STYLES.get(record.levelno, ""))
        except Exception:  # noqa: BLE001  (logging must never raise into the caller)
            self.handleError(record)


def third_party_level() -> int:
    """Log level for Ray, transformers, diffusers, huggingface_hub, onnxruntime: errors only unless -v."""
    return logging.INFO if _verbosity["level"] > 0 else logging.ERROR


def configure_logging(verbosity: int) -> None:
    """One logging setup: -q errors only, default warnings, -v info, -vv debug; libraries quiet unless -v.

    The environment variables are read by the libraries when they are imported (inside commands),
    so they are set here, before any of them is.
    """
    _verbosity["level"] = verbosity
    set_quiet(verbosity < 0)
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    root = logging.getLogger()
    if not any(isinstance(h, MessageHandler) for h in root.handlers):
        # not silenced by -q (levels filter); the console keeps lines above a live bar
        handler = MessageHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("diffsleuth").setLevel(level)
    library_level = third_party_level() if verbosity < 2 else logging.DEBUG
    for name in (*THIRD_PARTY_LOGGERS, "py.warnings"):  # library warnings.warn() calls too, unless -v
        logging.getLogger(name).setLevel(max(library_level, level))
    logging.captureWarnings(True)
    if verbosity <= 0:
        for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                                ("HF_HUB_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                                ("TOKENIZERS_PARALLELISM", "false"), ("RAY_DEDUP_LOGS", "1")):
            os.environ.setdefault(variable, value)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffsleuth {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Errors and results only: no progress bars, "
                                                               "messages or warnings on stderr.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, show_default=False,
                                         help="More log output; -v also shows Ray, transformers, diffusers and "
                                              "hub messages, -vv debug.")] = 0,
) -> None:
    """Tell real photos from images made by generative models.

    Exit codes: 0 ok; 1 internal error; 2 usage error (bad option, missing input or weights);
    3 partial (some inputs unreadable); 4 audit --fail-on-flag found a flagged cue; 130 interrupted.
    """
    configure_logging(-1 if quiet else verbose)


def setting_holding(settings: dict[str, Any], value: str, prefix: str = "") -> str | None:
    """The dotted ``--set`` key whose value is ``value`` (e.g. ``backbone``), or None."""
    for key, item in settings.items():
        if isinstance(item, dict):
            found = setting_holding(item, value, f"{prefix}{key}.")
            if found:
                return found
        elif item == value:
            return f"{prefix}{key}"
    return None


def fail_backbone(exc: Exception, settings: dict[str, Any] | None = None) -> typer.Exit:
    """A missing pretrained backbone is a usage error (exit 2): name it, and the --set key for a local copy."""
    source = getattr(exc, "source", None)
    key = setting_holding(settings, source) if settings and source else None
    hint = f" Then run again with --set {key}=/path/to/that/folder." if key else ""
    return fail_usage(f"{exc}{hint}")


def fail_usage(message: str) -> typer.Exit:
    """Print a one-line usage error and return the Exit to raise (code 2)."""
    error_console.print(error_line(message))
    return typer.Exit(EXIT_USAGE)
