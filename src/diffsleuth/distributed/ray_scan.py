"""Scan images on a Ray cluster with Ray Data.

The cluster reads the files as bytes (local paths on a shared file system, or URIs such as
``s3://bucket/folder``), a pool of actors each loads the detector once and scores batches with
the very code ``diffsleuth scan`` uses, so a row here equals that command's row for the same file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from diffsleuth.detectors.registry import check_scoring_choice, load_detector
from diffsleuth.detectors.scanning import DecodeLimits, row_columns, score_sources
from diffsleuth.devices import resolve_dtype
from diffsleuth.distributed.ray_common import (actor_device, default_actors, is_uri, limit_torch_threads,
                                                map_on_actors, path_item, row_path)
from diffsleuth.distributed.ray_csv import scan_csv_datasink
from diffsleuth.io.datasets import IMAGE_EXTENSIONS, expand_inputs
from diffsleuth.io.guards import path_kind
from diffsleuth.provenance import read_provenance


class RayScanError(ValueError):
    """The inputs or settings of a cluster scan are unusable (the message says why)."""


@dataclass(frozen=True)
class ActorSettings:
    """What every scoring actor needs to load the detector and score the way ``diffsleuth scan`` does."""

    detector: str | None = None
    gpus_per_actor: float = 0.0
    precision: str = "auto"
    """As ``scan --precision``: ``int8`` runs the default judge's encoder INT8 in onnxruntime (CPU actors)."""
    runtime: str = "auto"
    """As ``scan --runtime``: ``auto`` scores the default judge without torch on CPU actors."""
    batch_size: int = 32
    limits: DecodeLimits = DecodeLimits()
    threshold: float | None = None
    """Label at this threshold instead of the detector's stored one (``--threshold``)."""
    threads: int | None = None
    """Torch threads per actor (``--threads``); None: one per CPU Ray gives the actor."""
    cache_dir: str | None = None
    """Where the actors keep fetched weight files (``--cache-dir``, as ``$DIFFSLEUTH_CACHE``)."""
    provenance: bool = True
    maps: str | None = None
    """A folder every node sees: the actors write each scored image's overlay there (``--maps``)."""

    def __post_init__(self) -> None:
        # A bad precision or runtime fails on the driver, not in every actor.
        off_cpu = f"--gpus-per-actor {self.gpus_per_actor:g}" if self.gpus_per_actor > 0 else None
        check_scoring_choice(self.precision, self.runtime, off_cpu, "--gpus-per-actor 0")
        if not self.int8:
            resolve_dtype(self.device, self.precision)
        if self.maps is not None and is_uri(self.maps):
            raise ValueError(f"--maps writes PNG files into a folder on a file system every node sees, "
                             f"not to a URI ({self.maps})")

    @property
    def device(self) -> torch.device:
        return actor_device(self.gpus_per_actor)

    @property
    def int8(self) -> bool:
        return self.precision.strip().lower() == "int8"

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32 if self.int8 else resolve_dtype(self.device, self.precision)


class ScoreImages:
    """Ray Data UDF: one detector per actor, torch limited to the CPUs Ray gave the actor (or ``threads``)."""

    def __init__(self, settings: ActorSettings) -> None:
        limit_torch_threads(settings.threads)
        if settings.cache_dir is not None:
            os.environ["DIFFSLEUTH_CACHE"] = settings.cache_dir
        self.model = load_detector(settings.detector, device=settings.device, dtype=settings.dtype,
                                   threshold=settings.threshold, runtime=settings.runtime,
                                   encoder_precision="int8" if settings.int8 else "fp32")
        self.settings = settings
        self.columns = row_columns(self.model)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        limits = self.settings.limits
        if "bytes" in batch:  # URIs: Ray read the bytes
            names = [str(path) for path in batch["path"]]
            sources = [bytes(data) for data in batch["bytes"]]
        else:  # local files: read here, with the same guards as `diffsleuth scan` (a FIFO never blocks)
            names = [row_path(path) for path in batch["path"]]
            sources = [Path(name) for name in names]
        found = [read_provenance(source, max_bytes=limits.max_bytes) if self.settings.provenance else None
                 for source in sources]
        results = score_sources(self.model, names, sources, limits, self.settings.batch_size, provenance=found)
        if self.settings.maps is not None:
            from diffsleuth.detectors.score_maps import write_map

            for result, source in zip(results, sources):
                if result.score_map is not None:
                    write_map(Path(self.settings.maps), result, limits.max_pixels, self.model.score_map_label,
                              source if isinstance(source, bytes) else None)
        rows = [result.as_row() for result in results]
        return {column: [row.get(column) for row in rows] for column in self.columns}


def resolve_sources(inputs: Sequence[str]) -> list[str]:
    """Local inputs expanded like ``diffsleuth scan`` (absolute paths), or URIs passed to Ray as they are."""
    uris = [item for item in inputs if is_uri(item)]
    if uris and len(uris) != len(inputs):
        raise RayScanError("mix of URIs and local paths: scan them in separate runs")
    if uris:
        return list(uris)
    files: dict[str, None] = {}
    for item in inputs:
        found = expand_inputs([item])
        if not found:
            raise RayScanError(f"no image files found in {item}")
        missing = [path for path in found if path_kind(path) == "missing"]
        if missing:
            raise RayScanError(f"no such file: {missing[0]}")
        files.update((os.path.abspath(path), None) for path in found)
    return list(files)


def scan_dataset(inputs: Sequence[str], settings: ActorSettings, actors: int | None = None,
                 cpus_per_actor: float = 1.0, done: frozenset[str] = frozenset()) -> ray.data.Dataset | None:
    """A lazy Ray dataset of scan rows (``path, score, label, error`` and the detector's extras).

    Needs a running Ray (``ray.init``). Folders named in ``inputs`` are searched for image
    extensions; a file named explicitly is always scored, so a broken one becomes an error row.
    Paths in ``done`` (rows an earlier run wrote) are skipped; ``None`` when nothing is left.
    """
    sources = resolve_sources(inputs)
    remote = is_uri(sources[0])
    pool = actors or default_actors(settings.gpus_per_actor, cpus_per_actor)
    if remote:
        extensions = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        # Reading only moves bytes (actors decode), and a read task that waits for a CPU the actors
        # hold would never run: reads reserve no CPU, and as many run at once as there are actors.
        files = ray.data.read_binary_files(sources, include_paths=True, file_extensions=extensions,
                                           concurrency=pool, num_cpus=0)
        if done:
            files = files.filter(lambda row: row["path"] not in done, num_cpus=0)
    else:
        # Local files are named, not read, here: Arrow's file system takes only UTF-8 names, and the
        # actors read each file with the scan's guards. Names travel as row text (path_item).
        todo = [name for name in map(path_item, sources) if name not in done]
        if not todo:
            return None
        files = ray.data.from_items([{"path": name} for name in todo])
    return map_on_actors(files, ScoreImages, settings, pool, cpus_per_actor)


def write_rows(rows: ray.data.Dataset, output: str, fmt: str) -> None:
    """Run the scan; each block's rows land in their own file under ``output`` as soon as they are scored.

    Writing reserves no CPU, for the reason reading does not: the actors may hold them all. CSV
    goes through :func:`scan_csv_datasink`, so its rows are quoted and formatted as `diffsleuth scan`'s.
    """
    if fmt == "csv":
        rows.write_datasink(scan_csv_datasink(output), ray_remote_args={"num_cpus": 0})
        return
    writer = {"jsonl": rows.write_json, "parquet": rows.write_parquet}[fmt]
    writer(output, ray_remote_args={"num_cpus": 0})


def read_columns(output: str, fmt: str, columns: list[str]) -> Iterator[Any]:
    """Pandas batches of ``columns`` from the row files under ``output``."""
    reader = {"csv": ray.data.read_csv, "jsonl": ray.data.read_json, "parquet": ray.data.read_parquet}[fmt]
    options = {}
    if fmt == "csv":  # a file name may hold CR or LF: Arrow writes such a field quoted
        import pyarrow.csv

        options["parse_options"] = pyarrow.csv.ParseOptions(newlines_in_values=True)
    try:
        yield from reader(output, num_cpus=0, **options).select_columns(columns).iter_batches(batch_format="pandas")
    except Exception as exc:  # Ray wraps reader errors in many types; all mean the same here.
        raise RayScanError(f"{output}: row files that are not {fmt} scan rows ({type(exc).__name__}); "
                           "use another folder") from exc


def local_folder_in_use(output: str) -> bool:
    """Whether ``output`` is a local folder that already holds files (a URI is never checked)."""
    return not is_uri(output) and Path(output).is_dir() and any(Path(output).iterdir())


def written_paths(output: str, fmt: str) -> frozenset[str]:
    """Paths whose rows are already under ``output`` (what ``--resume`` skips)."""
    if not is_uri(output) and not local_folder_in_use(output):
        return frozenset()
    return frozenset(path for batch in read_columns(output, fmt, ["path"]) for path in batch["path"])


def count_labels(output: str, fmt: str) -> dict[str, int]:
    """``generated`` / ``real`` / ``unreadable`` counts of the rows written to ``output``."""
    counts = {"generated": 0, "real": 0, "unreadable": 0}
    for batch in read_columns(output, fmt, ["label", "error"]):
        for label in ("generated", "real"):
            counts[label] += int((batch["label"] == label).sum())
        counts["unreadable"] += int(batch["error"].fillna("").astype(str).str.len().gt(0).sum())
    return counts
