"""Score many files: decode in a thread pool, batch the model, one result per input, in order.

A file that cannot be decoded becomes a result with ``error`` set; the others are still scored.
Each result also carries what the file's metadata says about its origin (see
:mod:`diffsleuth.provenance`), read from the file's bytes beside, never instead of, the score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from diffsleuth.provenance import DEFAULT_MAX_BYTES, Provenance, read_provenance, verdict_of

if TYPE_CHECKING:  # the CLI imports this module to build its options; torch loads with the detector
    from diffsleuth.detectors.base import Detector

COLUMNS = ("path", "score", "label", "error")
PROVENANCE_COLUMNS = ("threshold", "verdict", "declared", "provenance")


def row_columns(detector: Detector) -> list[str]:
    """The columns of every row this detector gives: the standard four, threshold and provenance, its extras."""
    return [*COLUMNS, *PROVENANCE_COLUMNS, *detector.extra_columns]


@dataclass
class ScanResult:
    path: str
    score: float | None
    label: str | None
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    score_map: np.ndarray | None = None
    threshold: float | None = None
    """The threshold ``label`` was decided at."""
    provenance: Provenance | None = None
    """What the file's metadata says; None when provenance was not read."""

    def as_row(self) -> dict[str, Any]:
        row = {"path": self.path, "score": self.score, "label": self.label, "error": self.error,
               "threshold": self.threshold, "verdict": verdict_of(self.provenance, self.label),
               "declared": self.provenance.declared if self.provenance else None,
               "provenance": self.provenance.summary if self.provenance else None}
        row.update({k: v for k, v in self.extras.items() if isinstance(v, (str, int, float, bool))})
        return row


def decode_or_error(source: Path | bytes, max_pixels: int, name: str | None = None) -> Image.Image | ImageDecodeError:
    """The decoded image, or the error that names why it could not be read."""
    try:
        return decode_image(source, max_pixels=max_pixels, name=name)
    except ImageDecodeError as exc:
        return exc


def score_decoded(detector: Detector, names: Sequence[str], decoded: Sequence[Image.Image | ImageDecodeError],
                  batch_size: int = 32, provenance: Sequence[Provenance | None] | None = None) -> list[ScanResult]:
    """One result per input, in order: decode errors become error rows, the images are scored in batches.

    ``provenance`` (one per input, from :func:`diffsleuth.provenance.read_provenance`) is attached
    to the results as it is; labels are at the detector's ``config.threshold``.
    """
    images = [item for item in decoded if isinstance(item, Image.Image)]
    predictions = iter(detector.predict(images, batch_size=batch_size) if images else [])
    threshold = float(detector.config.threshold)
    found = list(provenance) if provenance is not None else [None] * len(names)
    results = []
    for name, item, prov in zip(names, decoded, found):
        if isinstance(item, ImageDecodeError):
            results.append(ScanResult(name, None, None, error=item.reason, threshold=threshold, provenance=prov))
        else:
            pred = next(predictions)
            results.append(ScanResult(name, round(pred.score, 6), pred.label, extras=pred.extras,
                                      score_map=pred.score_map, threshold=threshold, provenance=prov))
    return results


def scan_paths(
    detector: Detector,
    paths: Sequence[Path],
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[int], None] | None = None,
    workers: int = 4,
    provenance: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Iterator[ScanResult]:
    """Yield one :class:`ScanResult` per path, in input order; ``on_progress(n)`` after each batch.

    With ``provenance`` each result carries what the file's metadata says (C2PA, generator
    settings, IPTC, EXIF), read from at most ``max_bytes`` of the file.
    """
    def read(path: Path) -> Provenance | None:
        return read_provenance(path, max_bytes=max_bytes) if provenance else None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start:start + batch_size])
            decoded = list(pool.map(lambda p: decode_or_error(p, max_pixels), chunk))
            found = list(pool.map(read, chunk))
            yield from score_decoded(detector, [str(p) for p in chunk], decoded, batch_size, found)
            if on_progress is not None:
                on_progress(len(chunk))
