"""``diffsleuth scan``: score image files with a detector, one row per input."""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, ContextManager, Optional, TextIO

import typer

from diffsleuth.cli.app import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, app, err_console, fail_usage
from diffsleuth.cli.scan_output import (AtomicOutput, OutputFormat, OutputWriteError, RowStream, ScanOutputError,
                                        choose_format, output_problem, render, written_rows)
from diffsleuth.cli.weights import Runtime, configure_runtime, is_loading_error, load_scoring_detector
from diffsleuth.detectors.scanning import DEFAULT_MAX_BATCH_PIXELS, DecodeLimits, row_columns, scan_paths
from diffsleuth.detectors.score_maps import write_map
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.io.expansion import Expansion, expand
from diffsleuth.io.guards import DEFAULT_MAX_BYTES, encode_path
from diffsleuth.progress import error_line, progress


def open_output(output: Optional[Path], append: bool) -> ContextManager[TextIO]:
    """stdout, or ``output`` opened for rows; an output that cannot be written is a usage error."""
    if output is None:
        return contextlib.nullcontext(sys.stdout)
    problem = output_problem(output)
    try:
        if problem:
            raise ScanOutputError(problem)
        output.parent.mkdir(parents=True, exist_ok=True)
        return output.open("a" if append else "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise fail_usage(f"cannot write {output} ({exc.strerror or exc})") from exc
    except ScanOutputError as exc:
        raise fail_usage(str(exc)) from exc


def checked_inputs(paths: list[str]) -> Expansion:
    """The inputs expanded and checked before any model is loaded: nothing to read is a usage error
    (naming what was not found), a missing path or an empty glob beside readable ones a warning."""
    found = expand(paths)
    skipped = found.skipped_summary()
    if skipped:
        err_console.print(skipped)
    problems = [f"{text}: not found" for text in found.missing]
    problems += [f"{text}: no file matches this pattern" for text in found.unmatched]
    if not set(found.files) - {Path(text) for text in found.missing}:
        raise fail_usage("; ".join(problems) if problems else f"no image files found in {', '.join(paths)}")
    for problem in problems:
        err_console.print(error_line(problem + (" (its row says so)" if problem.endswith("not found") else ""),
                                     label="warning:"))
    return found


def scan_exit(counts: Counter[str], summary: bool) -> typer.Exit:
    """Report the counts per verdict (with ``summary``; the unreadable always); exit 3 if any input was unreadable."""
    scanned = sum(counts.values())
    if summary:
        each = ", ".join(f"{count} {verdict}" for verdict, count in sorted(counts.items()) if verdict != "unreadable")
        err_console.print(f"{scanned} inputs: {each + ', ' if each else ''}{counts['unreadable']} unreadable")
    if counts["unreadable"]:
        err_console.print(f"{counts['unreadable']} of {scanned} inputs could not be scored", style="yellow")
    return typer.Exit(EXIT_PARTIAL if counts["unreadable"] else EXIT_OK)


def load_error_text(exc: Exception) -> str:
    """A loading error's message: a KeyError's own text, not its repr (which quotes it again)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


@app.command()
def scan(
    paths: Annotated[list[str], typer.Argument(help="Image files, folders (recursive) or globs.")],
    detector: Annotated[Optional[str], typer.Option(
        "--detector", "-d", help="Shipped model name or a saved detector folder [default: the shipped default].")] = None,
    fmt: Annotated[Optional[OutputFormat], typer.Option(
        "--format", "-f", help="Output format [default: from the --output name (.csv, .json, .jsonl), else a table "
                               "on the terminal]; csv and jsonl are written row by row as images are scored.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write results to this file (csv, json or jsonl; a table is for the terminal).")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip inputs already in --output (csv or jsonl) and append the rest.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (anything but the CPU needs torch).")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, else fp32), fp32, fp16, bf16, or int8 (the default judge's encoder block-wise INT8 in onnxruntime on the CPU: 1.3x fp32's speed on an AVX-512 CPU, 0.7x on an AVX2-only one, and scores move by up to about 0.04 from fp32's; needs onnxruntime >= 1.22).")] = "auto",
    runtime: Annotated[Runtime, typer.Option(
        help="auto: onnxruntime without torch where it can score the detector (the default judge on the CPU "
             "in fp32), else torch; onnx or torch force one.")] = Runtime.auto,
    max_pixels: Annotated[int, typer.Option(help="Refuse images larger than this (decompression-bomb guard).")] = DEFAULT_MAX_PIXELS,
    max_bytes: Annotated[int, typer.Option(min=1, help="Refuse files larger than this many bytes, before reading them.")] = DEFAULT_MAX_BYTES,
    max_batch_pixels: Annotated[int, typer.Option(
        min=1, help="Decoded pixels in memory at once; a batch of large images is decoded in smaller groups.")] = DEFAULT_MAX_BATCH_PIXELS,
    summary: Annotated[bool, typer.Option("--summary", help="Print counts per label to stderr.")] = False,
    threads: Annotated[Optional[int], typer.Option(
        min=1, help="CPU threads for the model (onnxruntime, and torch's) [default: every CPU; torch's own "
                    "count when torch runs].")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option(
        "--cache-dir", help="Cache of fetched weight files [default: $DIFFSLEUTH_CACHE, else ~/.cache/diffsleuth].")] = None,
    maps: Annotated[Optional[Path], typer.Option(
        "--maps", help="Write a PNG overlay of each scored image's score map into this folder "
                       "(named <file stem>-<hash of the path>.png).")] = None,
    threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Label at this threshold (0..1) instead of the detector's stored one.")] = None,
    provenance: Annotated[bool, typer.Option(
        "--provenance/--no-provenance",
        help="Read C2PA manifests and generator/camera metadata into the verdict, declared and provenance columns.")] = True,
    ray: Annotated[bool, typer.Option("--ray", help=(
        "Score on a Ray cluster; --output is then a new or empty folder (or URI) of csv/jsonl row files "
        "(--format table means csv), inputs may be URIs (s3://...). The other options apply in every actor "
        "(--threads: torch threads per actor, default its CPU share; --maps: a folder every node sees; "
        "--max-bytes: a URI's file is read before its size is checked); --device is refused (actors run on "
        "CUDA with --gpus-per-actor above 0, else on the CPU). Needs the distributed extra."))] = False,
    address: Annotated[Optional[str], typer.Option(
        help="With --ray: cluster address (e.g. auto); default: the RAY_ADDRESS variable, else a local Ray.")] = None,
    actors: Annotated[Optional[int], typer.Option(
        min=1, help="With --ray: scoring actors [default: one per GPU share, else one per CPU share].")] = None,
    cpus_per_actor: Annotated[float, typer.Option(min=0.1, help="With --ray: CPUs per actor (torch threads).")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(
        min=0.0, help="With --ray: GPUs per actor; above 0 the model runs on CUDA.")] = 0.0,
) -> None:
    """Score images with a detector: one row per input with its verdict and detector score.

    The format follows the --output name (.csv, .json, .jsonl) unless --format says it; without
    --output the rows are a table on the terminal (never written into a file). CSV and JSON Lines
    rows are written as soon as each image is scored, so an interrupted or killed scan keeps them;
    run the same command with --resume to finish it.

    Folders are read for every image format the installed Pillow decodes (HEIC with the heif
    extra); the files skipped are counted on stderr. Inputs are checked before the model loads.

    Rows also say which threshold labelled them and what the file's metadata declares (C2PA,
    generator settings, IPTC, camera EXIF) and how that is backed. verdict is the headline:
    "generated (declared)" / "ai-edited (declared)" when a valid C2PA signature backs the
    declaration, "... (claimed)" for unsigned metadata, else detector_verdict (generated,
    uncertain, outside the detector's domain, no trace found). --no-provenance leaves the
    metadata columns empty.
    Every input gives one row: a file that is not a regular file, too large, not an image, too
    thin (aspect ratio over 50:1) or unreadable gets a row with the reason in `error`.

    Exit codes: 0 every input scored; 3 some inputs could not be read (their rows carry the
    error, the rest are scored); 2 usage error (bad option, no inputs or none that exists,
    unknown detector, an --output that cannot be written or whose name contradicts --format:
    checked before scoring); 1 the output failed while writing
    (rows written so far are kept: --resume finishes); 130 interrupted.
    """
    if ray:
        from diffsleuth.cli.scan_ray import run_ray_scan

        if device != "auto":
            raise fail_usage("--device does not apply with --ray: actors run on CUDA when --gpus-per-actor "
                             "is above 0, else on the CPU")
        raise run_ray_scan(paths, output, (fmt or OutputFormat.table).value, resume, address, actors, cpus_per_actor,
                           summary,
                           dict(detector=detector, gpus_per_actor=gpus_per_actor, precision=precision,
                                runtime=runtime.value, batch_size=batch_size, max_pixels=max_pixels, max_bytes=max_bytes,
                                max_batch_pixels=max_batch_pixels, threshold=threshold, threads=threads,
                                cache_dir=cache_dir, provenance=provenance, maps=maps))
    try:
        fmt = choose_format(fmt, output)
    except ScanOutputError as exc:
        raise fail_usage(str(exc)) from exc
    if resume and (output is None or not fmt.streams):
        raise fail_usage("--resume needs an --output in csv or jsonl")
    files = checked_inputs(paths).files
    appending = resume and output.is_file()
    if appending:  # before the model loads: a finished scan has nothing left to load it for
        try:
            done = written_rows(output, fmt)
        except ScanOutputError as exc:
            raise fail_usage(str(exc)) from exc
        todo = [f for f in files if encode_path(str(f)) not in done]
        err_console.print(f"resuming {output}: {len(files) - len(todo)} of {len(files)} inputs already there, "
                          f"{len(todo)} to scan")
        files = todo
        if not files:
            raise typer.Exit(EXIT_OK)

    configure_runtime(threads, cache_dir)
    try:
        model = load_scoring_detector(detector, device, precision, threshold, runtime.value)
    except Exception as exc:  # noqa: BLE001 -- only the loading errors below become usage errors
        if is_loading_error(exc):
            raise fail_usage(str(exc)) from exc
        if isinstance(exc, (ValueError, KeyError)):
            raise fail_usage(load_error_text(exc)) from exc
        raise

    columns = row_columns(model)
    if appending and fmt is OutputFormat.csv:
        try:
            written_rows(output, fmt, columns)
        except ScanOutputError as exc:
            raise fail_usage(str(exc)) from exc

    counts: Counter[str] = Counter()
    written_maps = 0
    kept: list[dict] = []
    atomic = None
    if output is not None and not fmt.streams:
        try:
            atomic = AtomicOutput(output)
        except ScanOutputError as exc:
            raise fail_usage(str(exc)) from exc
    limits = DecodeLimits(max_pixels=max_pixels, max_bytes=max_bytes, max_batch_pixels=max_batch_pixels)
    try:
        with open_output(output if fmt.streams else None, appending) as stream:
            rows = None
            if fmt.streams:
                rows = RowStream(stream, fmt, columns, write_header=not (appending and output.stat().st_size))
            try:
                with progress("scanning", len(files)) as advance:
                    for result in scan_paths(model, files, batch_size=batch_size, limits=limits,
                                             on_progress=advance, provenance=provenance):
                        row = result.as_row()
                        if rows is not None:
                            rows.write(row)
                        else:
                            kept.append(row)
                        counts["unreadable" if result.error else (row.get("verdict") or result.label)] += 1
                        if maps is not None and result.score_map is not None:
                            written_maps += write_map(maps, result, max_pixels, model.score_map_label)
            except KeyboardInterrupt:
                if rows is None:
                    kept_where = "no rows were written (--format csv or jsonl keeps them)"
                elif output is None:
                    kept_where = "their rows are printed above"
                else:
                    kept_where = f"their rows are in {output}: run the same command with --resume to finish"
                err_console.print(f"interrupted after {sum(counts.values())} of {len(files)} inputs; {kept_where}")
                raise typer.Exit(EXIT_INTERRUPTED) from None

        terminal = output is None and sys.stdout.isatty()
        text = None if rows is not None else render(kept, fmt, shutil.get_terminal_size().columns if terminal else None)
        if atomic is not None:
            atomic.commit(text)
            atomic = None
        elif text is not None:
            try:
                sys.stdout.write(text)
            except OSError as exc:
                raise OutputWriteError(exc.errno, exc.strerror or str(exc)) from exc
    except OutputWriteError as exc:
        where = output if output is not None else "standard output"
        kept_where = (f"the rows written so far are in {output}: run the same command with --resume to finish"
                      if fmt.streams and output is not None else "no rows were kept")
        err_console.print(error_line(f"cannot write to {where} ({exc.strerror or exc}); {kept_where}"))
        raise typer.Exit(EXIT_INTERNAL) from None
    finally:
        if atomic is not None:
            atomic.discard()
    scanned = sum(counts.values())
    if maps is not None:
        err_console.print(f"wrote {written_maps} score-map overlays to {maps}")
    if output is not None:
        err_console.print(f"{'appended' if appending else 'wrote'} {scanned} rows to {output}")
    raise scan_exit(counts, summary)
