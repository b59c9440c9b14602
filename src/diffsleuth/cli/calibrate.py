"""``diffsleuth calibrate``: a detector folder whose threshold meets a false-positive target on your photos."""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import app, err_console, fail_usage


def _scores(model, files: list[Path], batch_size: int) -> tuple[list[float], int]:
    """Full-precision scores of the readable files (the label compares these, not the rounded
    scores rows show), and how many files could not be read."""
    from PIL import Image

    from diffsleuth.detectors.scanning import DecodeLimits, decode_or_error

    from diffsleuth.progress import progress

    scores, unreadable = [], 0
    with progress("scoring", len(files)) as advance:
        for start in range(0, len(files), batch_size):
            decoded = [decode_or_error(path, limits=DecodeLimits()) for path in files[start:start + batch_size]]
            images = [item for item in decoded if isinstance(item, Image.Image)]
            unreadable += len(decoded) - len(images)
            scores += [p.score for p in model.predict(images, batch_size=batch_size)] if images else []
            advance(len(decoded))
    return scores, unreadable


def _writable_output(output: Path) -> bool:
    """Check, before any scoring, that ``output`` is a new or empty folder this user can write into
    (creating it); return whether it was created, so a later refusal can remove it again."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise fail_usage(f"{output} already exists and is not an empty folder: choose a new --output")
    created = not output.exists()
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=output):
            pass
    except OSError as exc:
        raise fail_usage(f"--output {output} cannot be written ({exc.strerror or exc}): choose another folder") from exc
    return created


def _unique(files: list[Path], what: str) -> list[Path]:
    """``files`` without byte-for-byte copies, saying on stderr how many were dropped."""
    from diffsleuth.evaluation.calibration import unique_by_content

    unique, duplicates = unique_by_content(files)
    if duplicates:
        err_console.print(f"{duplicates} of the {len(files)} {what} are copies of another's bytes (or links to "
                          f"one file) and count once: {len(unique)} left")
    return unique


@app.command()
def calibrate(
    photos: Annotated[list[str], typer.Argument(help="Your real photos: files, folders (recursive) or globs.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New detector folder to write (must not exist or be empty).")],
    target_fpr: Annotated[float, typer.Option(help="Largest acceptable share of real photos flagged, e.g. 0.01.")] = 0.01,
    confidence: Annotated[float, typer.Option(help="Probability that the FPR on new photos like these meets the target.")] = 0.95,
    detector: Annotated[Optional[str], typer.Option(
        "--detector", "-d", help="Shipped model name or a saved detector folder [default: the shipped default].")] = None,
    fakes: Annotated[Optional[list[str]], typer.Option(
        help="Known generated images (folder, files or globs; repeatable): report the detection rate at the new threshold.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA, else fp32), fp32, fp16 or bf16.")] = "auto",
) -> None:
    """Choose the threshold on your own real photos so that at most --target-fpr of photos like them
    are flagged, with --confidence; write a detector folder using it, plus report.md, report.json
    and a score histogram.

    Too few photos for the target are refused with the number needed (299 for 1% at 95%). Files
    with the same bytes (copies, links to one file) count once.

    Exit codes: 0 written; 2 usage error, too few photos, or unusable output folder.
    """
    import numpy as np

    from diffsleuth.extras import require

    require("eval", "diffsleuth calibrate")  # scipy for the bound, matplotlib for the histogram
    from diffsleuth.detectors.base import WeightsError
    from diffsleuth.detectors.registry import load_detector, resolve_detector_path
    from diffsleuth.devices import resolve_device, resolve_dtype
    from diffsleuth.evaluation.calibration import (
        HISTOGRAM_PNG, REPORT_JSON, REPORT_MD, CalibrationError, choose_threshold, detection_rate,
        photos_needed, plot_histogram, report_markdown, write_detector,
    )
    from diffsleuth.io.datasets import expand_inputs

    try:
        needed = photos_needed(target_fpr, confidence)
    except CalibrationError as exc:
        raise fail_usage(str(exc)) from exc
    listed = expand_inputs(photos)
    files = _unique(listed, "real photos")
    if len(files) < needed:
        copies = f" ({len(listed) - len(files)} copies left out)" if len(listed) > len(files) else ""
        raise fail_usage(f"--target-fpr {target_fpr:g} at {confidence:.0%} confidence needs at least {needed} "
                         f"distinct real photos, got {len(files)}{copies}: add {needed - len(files)} more or raise "
                         "--target-fpr")
    fake_files = _unique(expand_inputs(fakes), "known fakes") if fakes else []
    if fakes and not fake_files:
        raise fail_usage(f"no image files found in --fakes {', '.join(fakes)}")
    created = _writable_output(output)

    def refuse(message: str) -> typer.Exit:
        if created:
            output.rmdir()  # created empty above: a refusal leaves nothing behind
        return fail_usage(message)

    try:
        source = resolve_detector_path(detector)
        torch_device = resolve_device(device)
        model = load_detector(source, device=torch_device, dtype=resolve_dtype(torch_device, precision),
                              runtime="torch")
    except (ValueError, KeyError, WeightsError) as exc:
        raise refuse(str(exc).strip("'\"")) from exc

    err_console.print(f"scoring {len(files)} real photos with {model.name} ({source})")
    real, unreadable = _scores(model, files, batch_size)
    try:
        cal = choose_threshold(np.asarray(real), target_fpr, confidence)
    except CalibrationError as exc:
        raise refuse(f"{exc} ({unreadable} of {len(files)} could not be read)" if unreadable else str(exc)) from exc
    stored = float(model.config.threshold)
    fake_scores = None
    report = {"detector": model.name, "source": str(source), "output": str(output), "unreadable": unreadable,
              "duplicates": len(listed) - len(files),
              "stored_threshold": stored, "stored_flagged": int((np.asarray(real) >= stored).sum()),
              "calibration": asdict(cal), "scores": sorted(real)}
    if fake_files:
        err_console.print(f"scoring {len(fake_files)} known fakes")
        fake_list, fake_unreadable = _scores(model, fake_files, batch_size)
        fake_scores = np.asarray(fake_list)
        report["fakes"] = {**detection_rate(fake_scores, cal.threshold, confidence), "unreadable": fake_unreadable}

    write_detector(source, output, cal.threshold, {
        "source": str(source), "target_fpr": target_fpr, "confidence": confidence, "n": cal.n,
        "stored_threshold": stored, "report": REPORT_MD})
    plot_histogram(output / HISTOGRAM_PNG, np.asarray(real), fake_scores, cal.threshold, stored)
    (output / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (output / REPORT_MD).write_text(report_markdown(report), encoding="utf-8")
    err_console.print(f"threshold {cal.threshold:.6f}: {cal.flagged} of {cal.n} of your photos flagged "
                      f"({cal.calibration_fpr:.2%}); FPR upper bound {cal.fpr_upper_bound:.2%} at "
                      f"{confidence:.0%} confidence. Wrote {output} (report: {output / REPORT_MD})")
