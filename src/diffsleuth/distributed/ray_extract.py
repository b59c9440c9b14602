"""Fill the feature cache on a Ray cluster: ``diffsleuth extract FEATURE --ray``.

Ray Data spreads the records over a pool of actors; each actor builds the extractor (and so loads
the backbone) once and runs the very code of a one-process ``extract``
(:func:`diffsleuth.features.extract.extract_records`) on its batches, writing into the same
content-addressed cache. Cache writes are atomic (temporary file, then rename), so actors on many
machines can share one cache folder, and a re-run or a resumed run skips every image already there.
The data and the cache must be on a file system every node sees.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from diffsleuth.devices import resolve_dtype
from diffsleuth.distributed.ray_common import (actor_device, default_actors, limit_torch_threads, map_on_actors,
                                               path_item, row_path)
from diffsleuth.features.cache import FeatureCache
from diffsleuth.features.extract import ExtractionReport, extract_records, extractor_spec
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.settings import config_from_dict


@dataclass(frozen=True)
class ExtractSettings:
    """What every extraction actor needs to build the extractor and open the cache the same way."""

    feature: str
    settings: dict[str, Any] = field(default_factory=dict)
    cache: str = "feature-cache"
    batch_size: int = 8
    precision: str = "auto"
    gpus_per_actor: float = 0.0
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        # Bad names, settings or precisions fail on the driver, before any actor starts.
        config_from_dict(extractor_spec(self.feature).config_class, self.settings)
        resolve_dtype(actor_device(self.gpus_per_actor), self.precision)


class ExtractFeatures:
    """Ray Data UDF: one extractor per actor; a batch of records in, one summary row out."""

    def __init__(self, settings: ExtractSettings) -> None:
        limit_torch_threads()
        spec = extractor_spec(settings.feature)
        device = actor_device(settings.gpus_per_actor)
        self.extractor = spec.build(config_from_dict(spec.config_class, settings.settings), device,
                                    resolve_dtype(device, settings.precision))
        self.cache = FeatureCache(settings.cache, self.extractor.cache_config())
        self.settings = settings

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        records = [ImageRecord(Path(row_path(path)), class_name=None if name is None else str(name))
                   for path, name in zip(batch["path"], batch["class_name"])]
        try:
            report = extract_records(self.extractor, records, self.cache, batch_size=self.settings.batch_size,
                                     max_pixels=self.settings.max_pixels, progress=False)
        except Exception as exc:  # one bad batch (e.g. out of memory) is reported, the run goes on
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            report = ExtractionReport(failed=[(str(r.path), reason) for r in records])
        return {"n": [len(records)], "computed": [report.computed], "cached": [report.cached],
                "failed": [json.dumps(report.failed)], "directory": [str(self.cache.directory)]}


@dataclass
class ClusterReport(ExtractionReport):
    """A one-process :class:`ExtractionReport` plus the cache folder the actors wrote to."""

    directory: str | None = None


def record_items(records: Sequence[ImageRecord]) -> list[dict[str, str | None]]:
    """What travels to the actors: absolute paths (actors may run elsewhere; as :func:`path_item`
    text, so a name that is not UTF-8 survives Arrow) and class names (prompts)."""
    return [{"path": path_item(Path(r.path).resolve()), "class_name": r.class_name} for r in records]


def extract_on_ray(records: Sequence[ImageRecord], settings: ExtractSettings, actors: int | None = None,
                   cpus_per_actor: float = 1.0,
                   on_batch: Callable[[int], None] | None = None) -> ClusterReport:
    """Extract ``records`` on the running Ray (``ray.init`` first); failures are in the report.

    ``on_batch(n)`` is called on the driver as each batch of ``n`` records is done (progress). An
    exception from it (or Ctrl-C) stops the run; entries written so far stay in the cache.
    """
    pool = actors or default_actors(settings.gpus_per_actor, cpus_per_actor)
    items = record_items(records)
    blocks = max(1, min(len(items), pool * 4))
    summaries = map_on_actors(ray.data.from_items(items, override_num_blocks=blocks), ExtractFeatures,
                              settings, pool, cpus_per_actor)
    report = ClusterReport()
    for row in summaries.iter_rows():
        report.computed += int(row["computed"])
        report.cached += int(row["cached"])
        report.failed.extend((str(path), str(reason)) for path, reason in json.loads(row["failed"]))
        report.directory = str(row["directory"])
        if on_batch is not None:
            on_batch(int(row["n"]))
    return report
