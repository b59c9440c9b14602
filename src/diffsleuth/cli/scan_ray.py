"""``diffsleuth scan --ray``: the scan on a Ray cluster, rows written by Ray Data into a folder.

``scan-ray`` is the same command under its old name, kept for one release (it prints a note).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from diffsleuth.cli.app import EXIT_INTERRUPTED, app, err_console, fail_usage, third_party_level
from diffsleuth.cli.scan import scan_exit
from diffsleuth.detectors.scanning import DEFAULT_MAX_BATCH_PIXELS, DecodeLimits
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.io.guards import DEFAULT_MAX_BYTES


class ClusterFormat(str, Enum):
    csv = "csv"
    jsonl = "jsonl"
    parquet = "parquet"


def portable_detector(detector: Optional[str]) -> Optional[str]:
    """A shipped name stays a name; a saved folder becomes absolute, since actors run elsewhere."""
    from diffsleuth.detectors.registry import SHIPPED, resolve_detector_path

    folder = resolve_detector_path(detector)
    return detector if detector is None or detector in SHIPPED else str(folder.resolve())


@app.command("scan-ray")
def scan_ray(
    inputs: Annotated[list[str], typer.Argument(
        help="Image files, folders (recursive) or globs on a file system every node sees, or URIs (s3://...).")],
    output: Annotated[str, typer.Option(
        "--output", "-o", help="New or empty folder (or URI) for the row files Ray writes.")],
    detector: Annotated[Optional[str], typer.Option(
        "--detector", "-d", help="Shipped model name or a saved detector folder [default: the shipped default].")] = None,
    fmt: Annotated[ClusterFormat, typer.Option("--format", "-f", help="Row file format.")] = ClusterFormat.csv,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip inputs whose rows are already in --output and add the rest.")] = False,
    address: Annotated[Optional[str], typer.Option(
        help="Ray cluster address (e.g. auto); default: the RAY_ADDRESS variable, else a local Ray.")] = None,
    actors: Annotated[Optional[int], typer.Option(
        min=1, help="Scoring actors [default: one per GPU share, else one per CPU share].")] = None,
    cpus_per_actor: Annotated[float, typer.Option(min=0.1, help="CPUs per actor (torch threads).")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(min=0.0, help="GPUs per actor; above 0 the model runs on CUDA.")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")] = "auto",
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this (decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    summary: Annotated[bool, typer.Option("--summary", help="Print counts per label to stderr.")] = False,
) -> None:
    """Deprecated name of `diffsleuth scan --ray` (same options; also writes parquet).

    Needs the optional extra: pip install 'diffsleuth[distributed]'.
    """
    err_console.print("note: `scan-ray` is deprecated and will be removed; use `diffsleuth scan --ray` "
                      "(same options)")
    raise run_ray_scan(inputs, output, fmt.value, resume, address, actors, cpus_per_actor, summary,
                       dict(detector=detector, gpus_per_actor=gpus_per_actor, precision=precision,
                            batch_size=batch_size, max_pixels=max_pixels))


RAY_FORMATS = {"table": "csv", "csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
"""Row-file formats of a cluster scan; scan's default ``table`` means CSV row files there."""


def run_ray_scan(inputs: list[str], output: object, fmt: str, resume: bool, address: Optional[str],
                 actors: Optional[int], cpus_per_actor: float, summary: bool, options: dict[str, Any]) -> typer.Exit:
    """Score images on a Ray cluster: each actor loads the detector once; rows as `diffsleuth scan` gives.

    ``options`` are `scan`'s scoring options (``detector``, ``precision``, ``batch_size``, the limits
    ``max_pixels`` / ``max_bytes`` / ``max_batch_pixels``, ``threshold``, ``threads``,
    ``cache_dir``, ``provenance``, ``maps``, ``gpus_per_actor``); each actor applies them as `scan` does.
    Rows come in no particular order, one per input, in several files under ``output``, each written
    as soon as its images are scored. Needs the optional extra: pip install 'diffsleuth[distributed]'.
    Returns the exit: 0 every input scored; 3 some inputs could not be read (their rows carry the
    error); 2 usage error; 130 interrupted (finished row files are kept: run again with --resume).
    """
    from diffsleuth.extras import require

    require("distributed", "scan --ray")  # missing: the CLI's usage error (exit 2) naming the pip extra
    from diffsleuth.detectors.base import WeightsError
    from diffsleuth.distributed.ray_common import ray_session, restore_uri
    from diffsleuth.distributed.ray_scan import (RayScanError, count_labels, local_folder_in_use, scan_dataset,
                                                 write_rows, written_paths)

    if output is None:
        return fail_usage("--ray needs --output: a new or empty folder (or URI) for the row files")
    if fmt not in RAY_FORMATS:
        return fail_usage(f"--ray writes row files: --format csv or jsonl, not {fmt}")
    fmt, output = RAY_FORMATS[fmt], restore_uri(str(output))
    if not resume and local_folder_in_use(output):
        return fail_usage(f"{output} is not empty: rows from two scans would mix; choose a new folder or --resume")
    try:
        settings = actor_settings(**options)
    except (WeightsError, ValueError) as exc:
        return fail_usage(str(exc))
    maps = Path(settings.maps) if settings.maps is not None else None
    maps_before = set(maps.glob("*.png")) if maps is not None and maps.is_dir() else set()

    try:
        with ray_session(address, third_party_level()):
            try:
                done = written_paths(output, fmt) if resume else frozenset()
                if done:
                    err_console.print(f"resuming {output}: {len(done)} rows already there")
                rows = scan_dataset(inputs, settings, actors, cpus_per_actor, done)
                if rows is not None:
                    write_rows(rows, output, fmt)
                counts = count_labels(output, fmt)
            except RayScanError as exc:
                return fail_usage(str(exc))
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the row files finished so far are in {output}: "
                          "run the same command with --resume to finish")
        return typer.Exit(EXIT_INTERRUPTED)

    if maps is not None:  # the actors wrote them; a failed one is a warning in its actor's log
        written = len(set(maps.glob("*.png")) - maps_before) if maps.is_dir() else 0
        err_console.print(f"wrote {written} score-map overlays to {maps}")
    err_console.print(f"{sum(counts.values())} rows in {output}")
    return scan_exit(counts, summary)


def actor_settings(detector: Optional[str] = None, maps: Optional[Path] = None, cache_dir: Optional[Path] = None,
                   max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS, **rest: Any) -> Any:
    """`scan`'s options as the settings every actor gets: the same :class:`DecodeLimits` as a local
    scan, and paths made absolute (actors run elsewhere; a URI given to --maps is refused)."""
    from diffsleuth.distributed.ray_common import restore_uri
    from diffsleuth.distributed.ray_scan import ActorSettings

    limits = DecodeLimits(max_pixels=max_pixels, max_bytes=max_bytes, max_batch_pixels=max_batch_pixels)
    folder = None if maps is None else restore_uri(str(maps))
    return ActorSettings(portable_detector(detector), limits=limits,
                         maps=folder if folder is None or "://" in folder else str(Path(folder).resolve()),
                         cache_dir=None if cache_dir is None else str(cache_dir.expanduser().resolve()), **rest)
