"""``diffsleuth extract FEATURE``: fill the feature cache for a dataset (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from diffsleuth.cli.app import EXIT_OK, EXIT_PARTIAL, app, err_console, fail_backbone, fail_usage
from diffsleuth.extras import require
from diffsleuth.io.datasets import DatasetError, load_records
from diffsleuth.settings import apply_overrides, config_from_dict, config_to_dict, load_json


@app.command()
def extract(
    feature: Annotated[str, typer.Argument(help="Feature name: lare, dnf or dire.")],
    data: Annotated[list[Path], typer.Option("--data", help="Dataset root, manifest or folder (repeatable).")],
    cache: Annotated[Path, typer.Option(help="Feature cache folder.")] = Path("feature-cache"),
    config: Annotated[Optional[Path], typer.Option(help="JSON file with extractor settings.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: key=value (repeatable).")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, fp16 or bf16.")] = "auto",
) -> None:
    """Compute a feature for every image and store it in the cache; re-runs skip cached images."""
    require("research", f"diffsleuth extract {feature}")
    from diffsleuth.backbones.loading import BackboneUnavailableError  # torch: only when the command runs
    from diffsleuth.devices import resolve_device, resolve_dtype
    from diffsleuth.features.cache import FeatureCache
    from diffsleuth.features.extract import extract_records, extractor_spec

    try:
        spec = extractor_spec(feature)
        settings = apply_overrides(load_json(config) if config else {}, set_ or [])
        cfg = config_from_dict(spec.config_class, settings)
        torch_device = resolve_device(device)
        records = [r for root in data for r in load_records(root)]
    except (KeyError, ValueError, DatasetError, OSError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    if not records:
        raise fail_usage("no images found in the given data")
    try:
        extractor = spec.build(cfg, torch_device, resolve_dtype(torch_device, precision))
    except BackboneUnavailableError as exc:
        raise fail_backbone(exc, config_to_dict(cfg)) from exc
    store = FeatureCache(cache, extractor.cache_config())
    report = extract_records(extractor, records, store, batch_size=batch_size)
    err_console.print(f"{feature}: {report.computed} computed, {report.cached} already cached, "
                      f"{len(report.failed)} failed -> {store.directory}")
    for path, reason in report.failed:
        err_console.print(f"  [yellow]{path}[/]: {reason}", highlight=False)
    typer.echo(str(store.directory))
    raise typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)
