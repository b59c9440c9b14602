"""``diffsleuth extract FEATURE``: fill the feature cache for a dataset (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from diffsleuth.cli.app import (EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, app, err_console, fail_backbone, fail_usage,
                                third_party_level)
from diffsleuth.extras import require
from diffsleuth.io.datasets import DatasetError, ImageRecord, load_records
from diffsleuth.progress import progress as progress_bar
from diffsleuth.settings import apply_overrides, config_from_dict, config_to_dict, load_json

if TYPE_CHECKING:
    from diffsleuth.features.extract import ExtractionReport


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
    ray: Annotated[bool, typer.Option(
        "--ray", help="Extract on a Ray cluster (data and cache on a file system every node sees).")] = False,
    address: Annotated[Optional[str], typer.Option(
        help="With --ray: cluster address (e.g. auto); default: the RAY_ADDRESS variable, else a local Ray.")] = None,
    actors: Annotated[Optional[int], typer.Option(
        min=1, help="With --ray: extraction actors [default: one per GPU share, else one per CPU share].")] = None,
    cpus_per_actor: Annotated[float, typer.Option(min=0.1, help="With --ray: CPUs per actor (torch threads).")] = 1.0,
    gpus_per_actor: Annotated[float, typer.Option(
        min=0.0, help="With --ray: GPUs per actor; above 0 the backbone runs on CUDA (--device is not used).")] = 0.0,
) -> None:
    """Compute a feature for every image and store it in the cache; re-runs skip cached images.

    With --ray a pool of actors, each loading the backbone once, fills the same cache; an
    interrupted run keeps every finished entry and the same command finishes it.
    Exit codes: 0 all extracted; 3 some files could not be read (listed); 2 usage; 130 interrupted.
    """
    require("research", f"diffsleuth extract {feature}")
    try:
        settings = apply_overrides(load_json(config) if config else {}, set_ or [])
        records = [r for root in data for r in load_records(root)]
    except (KeyError, ValueError, DatasetError, OSError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    if not records:
        raise fail_usage("no images found in the given data")
    if ray:
        raise extract_ray(feature, records, settings, cache, batch_size, precision, address, actors,
                          cpus_per_actor, gpus_per_actor)
    from diffsleuth.backbones.loading import BackboneUnavailableError  # torch: only when the command runs
    from diffsleuth.devices import resolve_device, resolve_dtype
    from diffsleuth.features.cache import FeatureCache
    from diffsleuth.features.extract import extract_records, extractor_spec

    try:
        spec = extractor_spec(feature)
        cfg = config_from_dict(spec.config_class, settings)
        torch_device = resolve_device(device)
    except (KeyError, ValueError) as exc:
        raise fail_usage(str(exc).strip("'\"")) from exc
    try:
        extractor = spec.build(cfg, torch_device, resolve_dtype(torch_device, precision))
    except BackboneUnavailableError as exc:
        raise fail_backbone(exc, config_to_dict(cfg)) from exc
    store = FeatureCache(cache, extractor.cache_config())
    report = extract_records(extractor, records, store, batch_size=batch_size)
    raise summarise(feature, report, store.directory)


def summarise(feature: str, report: ExtractionReport, directory: object) -> typer.Exit:
    """Print the counts and every failure; the cache folder goes to stdout. Returns the exit."""
    err_console.print(f"{feature}: {report.computed} computed, {report.cached} already cached, "
                      f"{len(report.failed)} failed -> {directory}")
    for path, reason in report.failed:
        err_console.print(f"  {path}: {reason}")
    typer.echo(str(directory))
    return typer.Exit(EXIT_PARTIAL if report.failed else EXIT_OK)


def extract_ray(feature: str, records: list[ImageRecord], settings: dict[str, Any], cache: Path, batch_size: int,
                precision: str, address: Optional[str], actors: Optional[int], cpus_per_actor: float,
                gpus_per_actor: float) -> typer.Exit:
    """``extract --ray``: the same cache entries and summary as one process, from a pool of Ray actors.

    ``records`` and ``settings`` come parsed from :func:`extract`, so both paths refuse bad input alike."""
    require("distributed", "diffsleuth extract --ray")
    from diffsleuth.distributed.ray_common import ray_session
    from diffsleuth.distributed.ray_extract import ExtractSettings, extract_on_ray

    try:
        job = ExtractSettings(feature, settings, str(cache.resolve()), batch_size, precision, gpus_per_actor)
    except (KeyError, ValueError, OSError) as exc:
        return fail_usage(str(exc).strip("'\""))
    with progress_bar("extract", len(records)) as bar:
        try:
            with ray_session(address, third_party_level()):
                report = extract_on_ray(records, job, actors, cpus_per_actor, on_batch=bar)
        except KeyboardInterrupt:
            # No count: actors finish batches before the driver hears of them, so it would understate.
            err_console.print(f"interrupted; every finished entry is in {cache}: run the same command to finish")
            return typer.Exit(EXIT_INTERRUPTED)
    return summarise(feature, report, report.directory or cache)
