"""Score many files: decode in a thread pool, batch the model, one result per input, in order.

A file that cannot be decoded becomes a result with ``error`` set; the others are still scored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from diffsleuth.detectors.base import Detector
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image


@dataclass
class ScanResult:
    path: str
    score: float | None
    label: str | None
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = {"path": self.path, "score": self.score, "label": self.label, "error": self.error}
        row.update({k: v for k, v in self.extras.items() if isinstance(v, (str, int, float, bool))})
        return row


def _decode(path: Path, max_pixels: int) -> Image.Image | ImageDecodeError:
    try:
        return decode_image(path, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        return exc


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
            decoded = list(pool.map(lambda p: _decode(p, max_pixels), chunk))
            good = [(i, img) for i, img in enumerate(decoded) if isinstance(img, Image.Image)]
            predictions = detector.predict([img for _, img in good], batch_size=batch_size) if good else []
            by_index = {i: pred for (i, _), pred in zip(good, predictions)}
            for i, path in enumerate(chunk):
                item = decoded[i]
                if isinstance(item, ImageDecodeError):
                    yield ScanResult(str(path), None, None, error=item.reason)
                else:
                    pred = by_index[i]
                    yield ScanResult(str(path), round(pred.score, 6), pred.label, extras=pred.extras)
            if on_progress is not None:
                on_progress(len(chunk))
