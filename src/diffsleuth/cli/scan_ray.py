"""``diffsleuth scan-ray``: the scan on a Ray cluster, rows written by Ray Data into a folder."""

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
    """Score images on a Ray cluster: each actor loads the detector once; rows as `diffsleuth scan` gives.

    Rows come in no particular order, one per input, in several files under --output, each written
    as soon as its images are scored. Needs the optional extra: pip install 'diffsleuth[distributed]'.

    Exit codes: 0 every input scored; 3 some inputs could not be read (their rows carry the
    error); 2 usage error; 130 interrupted (finished row files are kept: run the same command with --resume).
    """
    try:
        import ray

        from diffsleuth.distributed.ray_scan import (ActorSettings, RayScanError, count_labels, local_folder_in_use,
                                                     scan_dataset, write_rows, written_paths)
    except ImportError as exc:
        raise fail_usage(f"Ray is not installed ({exc}): pip install 'diffsleuth[distributed]'") from exc
    from diffsleuth.detectors.base import WeightsError

    if not resume and local_folder_in_use(output):
        raise fail_usage(f"{output} is not empty: rows from two scans would mix; choose a new folder or --resume")
    try:
        settings = ActorSettings(portable_detector(detector), gpus_per_actor, precision, batch_size, max_pixels)
    except (WeightsError, ValueError) as exc:
        raise fail_usage(str(exc)) from exc

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=third_party_level())
    try:
        try:
            done = written_paths(output, fmt.value) if resume else frozenset()
            if done:
                err_console.print(f"resuming {output}: {len(done)} rows already there")
            rows = scan_dataset(inputs, settings, actors, cpus_per_actor, done)
            if rows is not None and fmt is ClusterFormat.csv:  # quoted as `diffsleuth scan` quotes
                rows.write_datasink(scan_csv_datasink(output), ray_remote_args={"num_cpus": 0})
            elif rows is not None:
                write_rows(rows, output, fmt.value)
            counts = count_labels(output, fmt.value)
        except RayScanError as exc:
            raise fail_usage(str(exc)) from exc
    except KeyboardInterrupt:
        err_console.print(f"interrupted; the row files finished so far are in {output}: "
                          "run the same command with --resume to finish")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        if started:
            ray.shutdown()

    err_console.print(f"{sum(counts.values())} rows in {output}")
    raise scan_exit(counts, summary)
