"""Score many files: decode in a thread pool, batch the model, one result per input, in order.

A file that cannot be decoded becomes a result with ``error`` set; the others are still scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffsleuth.detectors.base import Detector
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

COLUMNS = ("path", "score", "label", "error")


def row_columns(detector: Detector) -> list[str]:
    """The columns of every row this detector gives: the standard four, then its extras."""
    return [*COLUMNS, *detector.extra_columns]


@dataclass
class ScanResult:
    path: str
    score: float | None
    label: str | None
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    score_map: np.ndarray | None = None

    def as_row(self) -> dict[str, Any]:
        row = {"path": self.path, "score": self.score, "label": self.label, "error": self.error}
        row.update({k: v for k, v in self.extras.items() if isinstance(v, (str, int, float, bool))})
        return row


def decode_or_error(source: Path | bytes, max_pixels: int, name: str | None = None) -> Image.Image | ImageDecodeError:
    """The decoded image, or the error that names why it could not be read."""
    try:
        return decode_image(source, max_pixels=max_pixels, name=name)
    except ImageDecodeError as exc:
        return exc


def score_decoded(detector: Detector, names: Sequence[str], decoded: Sequence[Image.Image | ImageDecodeError],
                  batch_size: int = 32) -> list[ScanResult]:
    """One result per input, in order: decode errors become error rows, the images are scored in batches."""
    images = [item for item in decoded if isinstance(item, Image.Image)]
    predictions = iter(detector.predict(images, batch_size=batch_size) if images else [])
    results = []
    for name, item in zip(names, decoded):
        if isinstance(item, ImageDecodeError):
            results.append(ScanResult(name, None, None, error=item.reason))
        else:
            pred = next(predictions)
            results.append(ScanResult(name, round(pred.score, 6), pred.label, extras=pred.extras,
                                          score_map=pred.score_map))
    return results


def scan_paths(
    detector: Detector,
    paths: Sequence[Path],
    batch_size: int = 32,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[int], None] | None = None,
    workers: int = 4,
) -> Iterator[ScanResult]:
    """Yield one :class:`ScanResult` per path, in input order; ``on_progress(n)`` after each batch."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start:start + batch_size])
            decoded = list(pool.map(lambda p: decode_or_error(p, max_pixels), chunk))
            yield from score_decoded(detector, [str(p) for p in chunk], decoded, batch_size)
            if on_progress is not None:
                on_progress(len(chunk))
