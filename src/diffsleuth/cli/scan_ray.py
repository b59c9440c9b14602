"""``diffsleuth scan --ray``: the scan on a Ray cluster, rows written by Ray Data into a folder.

``scan-ray`` is the same command under its old name, kept for one release (it prints a note).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import EXIT_INTERRUPTED, app, err_console, fail_usage, third_party_level
from diffsleuth.cli.ray_csv import scan_csv_datasink
from diffsleuth.cli.scan import scan_exit
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS


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
    raise run_ray_scan(inputs, output, detector, fmt.value, resume, address, actors, cpus_per_actor,
                       gpus_per_actor, batch_size, precision, max_pixels, summary)


RAY_FORMATS = {"table": "csv", "csv": "csv", "jsonl": "jsonl", "parquet": "parquet"}
"""Row-file formats of a cluster scan; scan's default ``table`` means CSV row files there."""


def run_ray_scan(inputs: list[str], output: object, detector: Optional[str], fmt: str, resume: bool,
                 address: Optional[str], actors: Optional[int], cpus_per_actor: float, gpus_per_actor: float,
                 batch_size: int, precision: str, max_pixels: int, summary: bool) -> typer.Exit:
    """Score images on a Ray cluster: each actor loads the detector once; rows as `diffsleuth scan` gives.

    Rows come in no particular order, one per input, in several files under ``output``, each written
    as soon as its images are scored. Needs the optional extra: pip install 'diffsleuth[distributed]'.
    Returns the exit: 0 every input scored; 3 some inputs could not be read (their rows carry the
    error); 2 usage error; 130 interrupted (finished row files are kept: run again with --resume).
    """
    try:
        from diffsleuth.distributed.ray_common import ray_session, restore_uri
        from diffsleuth.distributed.ray_scan import (ActorSettings, RayScanError, count_labels, local_folder_in_use,
                                                     scan_dataset, write_rows, written_paths)
    except ImportError as exc:
        return fail_usage(f"Ray is not installed ({exc}): pip install 'diffsleuth[distributed]'")
    from diffsleuth.detectors.base import WeightsError

    if output is None:
        return fail_usage("--ray needs --output: a new or empty folder (or URI) for the row files")
    if fmt not in RAY_FORMATS:
        return fail_usage(f"--ray writes row files: --format csv or jsonl, not {fmt}")
    fmt, output = RAY_FORMATS[fmt], restore_uri(str(output))
    if not resume and local_folder_in_use(output):
        return fail_usage(f"{output} is not empty: rows from two scans would mix; choose a new folder or --resume")
    try:
        settings = ActorSettings(portable_detector(detector), gpus_per_actor, precision, batch_size, max_pixels)
    except (WeightsError, ValueError) as exc:
        return fail_usage(str(exc))

    try:
        with ray_session(address, third_party_level()):
            try:
                done = written_paths(output, fmt) if resume else frozenset()
                if done:
                    err_console.print(f"resuming {output}: {len(done)} rows already there")
                rows = scan_dataset(inputs, settings, actors, cpus_per_actor, done)
                if rows is not None and fmt == "csv":  # quoted as `diffsleuth scan` quotes
                    rows.write_datasink(scan_csv_datasink(output), ray_remote_args={"num_cpus": 0})
                elif rows is not None:
                    write_rows(rows, output, fmt)
                counts = count_labels(output, fmt)
            except RayScanError as exc:
                return fail_usage(str(exc))
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the row files finished so far are in {output}: "
                          "run the same command with --resume to finish")
        return typer.Exit(EXIT_INTERRUPTED)

    err_console.print(f"{sum(counts.values())} rows in {output}")
    return scan_exit(counts, summary)
