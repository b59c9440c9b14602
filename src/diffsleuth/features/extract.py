"""Batched feature extraction over a dataset, through the feature cache.

Extractors register by name (``lare``, ``dnf``, ``dire``). Running an extraction skips every image
already in the cache, so re-runs cost nothing and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from PIL import Image

from diffsleuth.features.cache import FeatureCache, content_hash
from diffsleuth.io.datasets import ImageRecord
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from diffsleuth.io.guards import os_reason
from diffsleuth.io.degrade import parse_degradation
from diffsleuth.progress import echo, progress as progress_bar
from diffsleuth.registry import LazyRegistry


class FeatureExtractor(Protocol):
    """Computes features for a batch of decoded images."""

    def cache_config(self) -> dict[str, Any]:
        """Everything that determines the output (backbone, sizes, seeds), for the cache key."""

    def extract(self, images: list[Image.Image], records: list[ImageRecord]) -> dict[str, torch.Tensor]:
        """Return tensors whose first dimension is the batch."""


@dataclass
class ExtractorSpec:
    name: str
    config_class: type
    build: Callable[[Any, torch.device, torch.dtype], FeatureExtractor]


_EXTRACTORS: LazyRegistry[ExtractorSpec] = LazyRegistry("feature", {
    "lare": "diffsleuth.detectors.lare2.features",
    "dnf": "diffsleuth.detectors.dnf.features",
    "dire": "diffsleuth.detectors.dnf.dire",
})


def register_extractor(name: str, config_class: type):
    """Decorator for ``build(config, device, dtype) -> FeatureExtractor``."""

    def wrap(build: Callable[[Any, torch.device, torch.dtype], FeatureExtractor]):
        _EXTRACTORS.register(name, ExtractorSpec(name, config_class, build))
        return build

    return wrap


def extractor_spec(name: str) -> ExtractorSpec:
    return _EXTRACTORS.get(name)


class ReencodedExtractor:
    """Re-encode every image of both classes the same way (e.g. ``jpeg:90``) before extraction,
    to neutralise a dataset's format shortcut; the re-encoding is part of the cache key."""

    def __init__(self, extractor: FeatureExtractor, reencode: str) -> None:
        self.extractor = extractor
        self.degrade = parse_degradation(reencode)

    def cache_config(self) -> dict[str, Any]:
        config = self.extractor.cache_config()
        return config if not self.degrade.steps else {**config, "reencode": str(self.degrade)}

    def extract(self, images: list[Image.Image], records: list[ImageRecord]) -> dict[str, torch.Tensor]:
        return self.extractor.extract([self.degrade(img) for img in images], records)


@dataclass
class ExtractionReport:
    computed: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def extract_records(
    extractor: FeatureExtractor,
    records: Sequence[ImageRecord],
    cache: FeatureCache,
    batch_size: int = 8,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool | None = None,
) -> ExtractionReport:
    """Fill ``cache`` with features of every record; unreadable or undecodable files are reported, not fatal.

    ``progress=None`` shows a bar only on a terminal.
    """
    report = ExtractionReport()
    pending: list[tuple[str, ImageRecord]] = []
    for record in records:
        try:
            key = content_hash(record.path)
        except OSError as exc:
            report.failed.append((str(record.path), getattr(exc, "reason", None) or os_reason(exc)))
            continue
        if key in cache:
            report.cached += 1
        else:
            pending.append((key, record))
    with progress_bar("extract", len(pending), enabled=progress) as advance:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            images, keep = [], []
            for key, record in chunk:
                try:
                    images.append(decode_image(record.path, max_pixels=max_pixels))
                    keep.append((key, record))
                except ImageDecodeError as exc:
                    report.failed.append((str(record.path), exc.reason))
            if images:
                features = extractor.extract(images, [r for _, r in keep])
                for i, (key, _) in enumerate(keep):
                    cache.put(key, {name: value[i] for name, value in features.items()})
                    report.computed += 1
            advance(len(chunk))
    return report


def _hash_or_none(path) -> str | None:
    """The content hash, or None for a file that vanished or changed kind since extraction."""
    try:
        return content_hash(path)
    except OSError:
        return None


def extract_splits(
    extractor: FeatureExtractor,
    splits: dict[str, list[ImageRecord]],
    cache_root: str,
    batch_size: int = 8,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
) -> tuple[FeatureCache, dict[str, list[tuple[ImageRecord, str]]]]:
    """Fill the cache for every split; return (cache, split -> [(record, cache key)]).

    Undecodable images are reported and left out, so training never stops on one bad file. In a
    multi-process run process ``rank`` of ``world`` extracts every world-th image, ``barrier``
    waits for all of them, and every process keeps exactly the images whose entry is in the cache.
    """
    cache = FeatureCache(cache_root, extractor.cache_config())
    everything = [r for part in splits.values() for r in part]
    report = extract_records(extractor, everything[rank::world], cache, batch_size=batch_size)
    for path, reason in report.failed:
        echo(f"skipping {path}: {reason}")
    echo(f"features: {report.computed} computed, {report.cached} cached -> {cache.directory}")
    if barrier is not None:
        barrier()
    keyed = {name: [(r, key) for r in part if (key := _hash_or_none(r.path)) and key in cache]
             for name, part in splits.items()}
    return cache, keyed
