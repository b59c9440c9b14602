"""``diffsleuth eval`` (metrics, robustness sweeps, reports) and ``diffsleuth audit`` (shortcut cues)."""

from __future__ import annotations

import json
import random
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from diffsleuth.cli.app import EXIT_FLAGGED, EXIT_OK, EXIT_PARTIAL, app, err_console, fail_usage
from diffsleuth.extras import require
from diffsleuth.evaluation.protocols import Protocol, ProtocolError, load_protocol, parse_roots, protocol_records
from diffsleuth.io.datasets import LAYOUTS_HELP, DatasetError, ImageRecord, assign_splits, load_records
from diffsleuth.io.degrade import parse_degradation
from diffsleuth.progress import error_line


class AuditFormat(str, Enum):
    table = "table"
    json = "json"


def labelled_records(roots: list[str]) -> list[ImageRecord]:
    records = []
    for root in roots:
        records.extend(r for r in load_records(root) if r.label is not None)
    if not records:
        raise DatasetError(f"no labelled images in {', '.join(roots)}; {LAYOUTS_HELP}")
    return records


def select_split(records: list[ImageRecord], split: str | None, *, seed: int, val_fraction: float,
                 test_fraction: float, group: str) -> list[ImageRecord]:
    """Records of ``split``; records without one get the same deterministic split as ``diffsleuth train``."""
    if split is None:
        return records
    chosen = [r for r in assign_splits(records, val_fraction, test_fraction, seed, group=group) if r.split == split]
    if not chosen:
        raise DatasetError(f"no images in split {split!r}")
    return chosen


def subsample(records: list[ImageRecord], max_images: int | None, seed: int) -> list[ImageRecord]:
    if max_images is None or len(records) <= max_images:
        return records
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return sorted(shuffled[:max_images], key=lambda r: str(r.path))


def print_summary(result: dict, output: Path) -> None:
    from diffsleuth.evaluation.reports import MIN_CI_COUNT, fmt, fmt_ci, shown_groups

    at = result.get("thresholds", {}).get("accuracy", 0.5)
    table = Table(show_edge=False, header_style="bold",
                  title=f"acc at the detector's threshold {at:.4f}; 95% bootstrap CI (rows with "
                        f">= {MIN_CI_COUNT} images per class)")
    for column in ("group", "reals", "fakes", "acc", "acc CI", "bal acc", "AP", "AUC", "AUC CI", "TPR@5%FPR"):
        table.add_column(column, justify="left" if column == "group" else "right")
    rows = {"overall": result["overall"], **shown_groups(result, "per_generator")}
    for name, row in rows.items():
        table.add_row(name, fmt(row.get("n_real")), fmt(row.get("n_fake")), fmt(row["acc"]),
                      fmt_ci(row["ci"]["acc"], row), fmt(row["balanced_acc"]), fmt(row["ap"]), fmt(row["auc"]),
                      fmt_ci(row["ci"]["auc"], row), fmt(row["tpr_at_5fpr"]))
    Console(file=sys.stdout, width=160).print(table)
    for summary in result.get("robustness", {}).get("summary", []):
        typer.echo(f"  {summary['label']:<32} acc {fmt(summary['acc'])}  bal acc {fmt(summary['balanced_acc'])}  "
                   f"AP {fmt(summary['ap'])}  AUC {fmt(summary['auc'])}")
    err_console.print(f"reports in {output}")


def _matrix_detectors(specs: list[str], protocol: Protocol) -> dict[str, str]:
    """``NAME=FOLDER`` pairs, NAME being a generator of the preset or one of its folder aliases."""
    aliases = {a.lower(): name for name, names in protocol.generators.items() for a in [name, *names]}
    detectors = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or name.strip().lower() not in aliases:
            raise ProtocolError(f"matrix protocols need --detector GENERATOR=FOLDER with GENERATOR one of "
                                f"{', '.join(protocol.generators)}; got {spec!r}")
        detectors[aliases[name.strip().lower()]] = folder
    return detectors


def _matrix_tables(results: dict[str, dict], protocol: Protocol) -> tuple[dict, str]:
    from diffsleuth.evaluation.reports import fmt

    matrix = {key: {train: {test: row[key] for test, row in result["per_generator"].items()}
                    for train, result in results.items()} for key in ("acc", "ap", "auc")}
    tests = list(protocol.generators)
    lines = []
    for key in ("acc", "ap", "auc"):
        lines += [f"## {key} (rows: trained on, columns: tested on)\n", "| trained on | " + " | ".join(tests) + " |",
                  "|---|" + "---|" * len(tests)]
        for train in results:
            lines.append(f"| {train} | " + " | ".join(fmt(matrix[key][train].get(t)) for t in tests) + " |")
        lines.append("")
    return matrix, "\n".join(lines)


@app.command("eval")
def eval_command(
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for scores.csv, metrics.json and reports.")],
    data: Annotated[Optional[list[str]], typer.Option("--data", help="Labelled dataset root or manifest (repeatable).")] = None,
    detector: Annotated[Optional[list[str]], typer.Option(
        "--detector", "-d", help="Shipped name or saved folder [default: shipped default]; matrix protocols: "
                                 "GENERATOR=FOLDER, repeated.")] = None,
    protocol: Annotated[Optional[Path], typer.Option(help="Protocol preset (configs/protocols/*.json).")] = None,
    root: Annotated[Optional[list[str]], typer.Option("--root", help="Bind a preset's data root: name=/path.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Evaluate only this split (train/val/test); unsplit data is "
                                                      "split as `diffsleuth train` does.")] = None,
    val_data: Annotated[Optional[list[str]], typer.Option("--val-data", help="Validation data for choosing a threshold.")] = None,
    val_split: Annotated[Optional[str], typer.Option(help="Use this split of --data as validation data (e.g. val).")] = None,
    robustness: Annotated[bool, typer.Option("--robustness", help="Run the default robustness sweep.")] = False,
    sweep: Annotated[Optional[list[str]], typer.Option(help="Sweep conditions: 'default' or specs like jpeg:75,blur:1.")] = None,
    equalize: Annotated[Optional[str], typer.Option(help="Re-encode every image of both classes first, e.g. jpeg:90 or png.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 32,
    max_images: Annotated[Optional[int], typer.Option(min=1, help="Evaluate a seeded random subset of this size.")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the split assignment, subsampling and bootstrap.")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Split assignment for unsplit data (as in training).")] = 0.15,
    test_fraction: Annotated[float, typer.Option(help="Split assignment for unsplit data (as in training).")] = 0.15,
    split_group: Annotated[str, typer.Option(help="Record attribute that must not straddle splits.")] = "path",
    report: Annotated[str, typer.Option(help="Report formats, comma-separated: md,json,html.")] = "md,json,html",
) -> None:
    """Evaluate a detector on labelled data: metrics overall / per generator / per family, reports.

    Exit codes: 0 done; 3 done but some files were unreadable (listed in the reports); 2 usage error.
    """
    # torch, scikit-learn, matplotlib: imported when the command runs, not for --help
    require("eval", "diffsleuth eval")
    from diffsleuth.backbones.loading import BackboneUnavailableError
    from diffsleuth.detectors.base import WeightsError
    from diffsleuth.detectors.registry import load_detector
    from diffsleuth.devices import resolve_device, resolve_dtype
    from diffsleuth.evaluation.pipeline import EvalOptions, evaluate_detector
    from diffsleuth.evaluation.reports import write_reports
    from diffsleuth.evaluation.robustness import parse_sweep
    from diffsleuth.evaluation.runner import json_safe

    formats = tuple(f.strip() for f in report.split(",") if f.strip())
    try:
        if bool(protocol) == bool(data):
            raise ValueError("give either --data or --protocol (with --root)")
        conditions = parse_sweep(["default"] if robustness and not sweep else (sweep or []))
        if equalize:
            parse_degradation(equalize)
        if any(f not in ("md", "json", "html") for f in formats):
            raise ValueError(f"--report takes md, json, html; got {report!r}")
        options = EvalOptions(equalize=equalize, sweep=conditions, batch_size=batch_size, n_bootstrap=bootstrap,
                              seed=seed)
        split_args = dict(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, group=split_group)
        notes: list[str] = []
        preset = load_protocol(protocol) if protocol else None
        if preset is not None:
            if split:
                raise ValueError("--split conflicts with --protocol (the preset names its test split)")
            records, notes = protocol_records(preset, parse_roots(root or []))
            expected = list(preset.generators)
        else:
            everything = labelled_records(list(data))
            records = select_split(everything, split, **split_args)
            expected = []
        records = subsample(records, max_images, seed)
        val_records = None
        if val_data:
            val_records = labelled_records(list(val_data))
        elif val_split:
            if preset is not None:
                raise ValueError("--val-split needs --data; use --val-data with a protocol")
            val_records = select_split(everything, val_split, **split_args)
        if val_records:
            val_records = subsample(val_records, max_images, seed)
        torch_device = resolve_device(device)
        dtype = resolve_dtype(torch_device, precision)
        if preset is not None and preset.kind == "matrix":
            detectors = _matrix_detectors(detector or [], preset)
        else:
            if detector and len(detector) > 1:
                raise ValueError("give one --detector (several only with a matrix protocol)")
            detectors = {"": detector[0] if detector else None}
        models = {key: load_detector(value, device=torch_device, dtype=dtype, runtime="torch")
                  for key, value in detectors.items()}
    except (ValueError, KeyError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    except (WeightsError, BackboneUnavailableError) as exc:
        raise fail_usage(str(exc)) from exc

    results = {}
    for key, model in models.items():
        err_console.print(f"evaluating {detectors[key] or 'default'} on {len(records)} images", highlight=False)
        result, scored = evaluate_detector(model, records, options, val_records=val_records,
                                           expected_generators=expected)
        result.update(detector=str(detectors[key] or "default"), data=list(data or []) or
                      [f"{k}={v}" for k, v in parse_roots(root or []).items()],
                      protocol=preset.name if preset else None, split=split or (preset.test_split if preset else None),
                      notes=notes + ([preset.threshold_note] if preset and preset.threshold_note else []))
        target = output / key.replace(" ", "_") if key else output
        title = f"diffsleuth evaluation: {result['detector']}" + (f" ({preset.name})" if preset else "")
        write_reports(result, scored, target, title=title, formats=formats)
        print_summary(result, target)
        results[key] = result
    if preset is not None and preset.kind == "matrix":
        matrix, markdown = _matrix_tables(results, preset)
        (output / "matrix.json").write_text(json.dumps(json_safe(matrix), indent=2) + "\n", encoding="utf-8")
        (output / "matrix.md").write_text(f"# {preset.name}\n\n{preset.description}\n\n{markdown}", encoding="utf-8")
        typer.echo(markdown)
    failed = sum(len(r["failures"]) for r in results.values())
    if failed:
        err_console.print(f"{failed} images could not be read (listed in the reports)", style="yellow")
    raise typer.Exit(EXIT_PARTIAL if failed else EXIT_OK)


@app.command("audit")
def audit_command(
    dataset: Annotated[list[str], typer.Argument(help="Labelled dataset roots or manifests.")],
    equalize: Annotated[Optional[str], typer.Option(help="Re-encode both classes first (e.g. jpeg:90, png), "
                                                         "to check that equalisation removes a cue.")] = None,
    fmt_: Annotated[AuditFormat, typer.Option("--format", "-f", help="table or json.")] = AuditFormat.table,
    split: Annotated[Optional[str], typer.Option(help="Audit only this split (unsplit data: as `diffsleuth train` "
                                                      "splits it with --seed).")] = None,
    max_images: Annotated[Optional[int], typer.Option(min=2, help="Audit a seeded random subset of this size.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split assignment and the subset.")] = 0,
    fail_on_flag: Annotated[bool, typer.Option("--fail-on-flag", help="Exit with code 4 when any cue is flagged "
                                                                      "(to gate CI on a clean dataset).")] = False,
) -> None:
    """Shortcut audit: AUC of cues that should carry no information (format, size, JPEG history, metadata).

    A cue with max(AUC, 1-AUC) above 0.8 is flagged: a detector can separate the classes with it
    alone, so its accuracy on this data says little about generation artefacts.

    Exit codes: 0 done (flagged cues are warnings); 4 with --fail-on-flag when any cue is flagged;
    2 usage error.
    """
    require("eval", "diffsleuth audit")
    from diffsleuth.evaluation.audit import audit_records  # scikit-learn: only when the command runs
    from diffsleuth.evaluation.runner import json_safe

    try:
        if equalize:
            parse_degradation(equalize)
        records = select_split(labelled_records(dataset), split, seed=seed, val_fraction=0.15, test_fraction=0.15,
                               group="path")
        report = audit_records(subsample(records, max_images, seed), equalize=equalize)
    except (ValueError, KeyError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    if fmt_ is AuditFormat.json:
        sys.stdout.write(json.dumps(json_safe(report), indent=2) + "\n")
    else:
        table = Table(show_edge=False, header_style="bold",
                      title=f"{report['n_real']} real, {report['n_generated']} generated; "
                            f"equalize: {report['equalize'] or 'none'}")
        for column in ("cue", "AUC", "flag", "real", "generated"):
            table.add_column(column)
        for cue in report["cues"]:
            table.add_row(cue["name"], f"{cue['auc']:.3f}", "[bold red]FLAGGED[/]" if cue["flagged"] else "ok",
                          cue["by_class"]["real"], cue["by_class"]["generated"])
        Console(file=sys.stdout, width=160).print(table)
    for cue in report["cues"]:
        if cue["flagged"]:
            err_console.print(error_line(f"{cue['name']} separates the classes on its own (AUC {cue['auc']:.3f}, "
                                         f"{cue['direction']}): {cue['suggestion']}", label="WARNING"))
    if report["failures"]:
        err_console.print(f"{len(report['failures'])} files could not be read", style="yellow")
    flagged = any(cue["flagged"] for cue in report["cues"])
    raise typer.Exit(EXIT_FLAGGED if fail_on_flag and flagged else EXIT_OK)
