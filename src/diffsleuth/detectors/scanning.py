"""Score many files: decode in a thread pool, batch the model, one result per input, in order.

A file that cannot be decoded becomes a result with ``error`` set; the others are still scored.
Each result also carries what the file's metadata says about its origin (see
:mod:`diffsleuth.provenance`), read from the file's bytes beside, never instead of, the score.
Memory is bounded by planning: every file's header is read first (:func:`probe_image`), and the
files are decoded in groups whose decoded pixels stay under ``max_batch_pixels``; each decoded
image is at once reduced to what the detector reads (:meth:`Detector.reduce_input`), so only
model-sized images wait for the model. With a thread pool the next group decodes while the
current one is scored (groups of half the budget, at most one ahead, so decoding and the model
overlap and the two groups together still stay within ``max_batch_pixels``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from diffsleuth.io.decode import (DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, ImageDecodeError, Source, decode_image,
                                  probe_image)
from diffsleuth.io.guards import DEFAULT_MAX_BYTES, encode_path
from diffsleuth.provenance import Provenance, read_provenance
from diffsleuth.verdict import decide_detector_verdict, verdict_for

if TYPE_CHECKING:  # the CLI imports this module to build its options; torch loads with the detector
    from diffsleuth.detectors.base import Detector

COLUMNS = ("path", "score", "label", "error")
PROVENANCE_COLUMNS = ("threshold", "verdict", "detector_verdict", "declared", "declared_by", "provenance")
"""After the standard four: the threshold, the headline ``verdict`` and the pixels' ``detector_verdict``
(:mod:`diffsleuth.verdict`), what the file's metadata declares and how that is backed."""

DEFAULT_MAX_BATCH_PIXELS = 128_000_000
"""Decoded pixels in flight at once by default: two images at the default pixel limit."""


def row_columns(detector: Detector) -> list[str]:
    """The columns of every row this detector gives: the standard four, threshold, verdicts and provenance, its extras."""
    return [*COLUMNS, *PROVENANCE_COLUMNS, *detector.extra_columns]


@dataclass(frozen=True)
class DecodeLimits:
    """What one scan accepts: bytes per file, pixels and aspect ratio per image, pixels in flight."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_aspect: float = DEFAULT_MAX_ASPECT
    max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS


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
    uncertain_threshold: float | None = None
    """The lower end of the ``uncertain`` band (None: the detector has none)."""
    outside_domain: str | None = None
    """Why the detector cannot judge this image, when it cannot."""
    outside_overrides: bool = False
    """The domain check wins over a score at or above the threshold."""

    @property
    def detector_verdict(self) -> str | None:
        """What the pixels say; None for an error row. ``generated`` follows ``label`` (decided on the
        unrounded score), so the two never disagree at the threshold."""
        if self.error is not None or self.score is None:
            return None
        at_label = float("-inf") if self.label == "generated" else float("inf")
        return decide_detector_verdict(self.score, at_label, self.uncertain_threshold, self.outside_domain is not None,
                                       self.outside_overrides)

    def as_row(self) -> dict[str, Any]:
        """The row; ``path`` (and any text) as :func:`encode_path` writes it, so any file name is valid text."""
        detector_verdict = self.detector_verdict
        prov = self.provenance
        row = {"path": self.path, "score": self.score, "label": self.label, "error": self.error,
               "threshold": self.threshold, "verdict": verdict_for(detector_verdict, prov),
               "detector_verdict": detector_verdict, "declared": prov.declared if prov else None,
               "declared_by": prov.signature if prov else None, "provenance": prov.summary if prov else None}
        row.update({k: v for k, v in self.extras.items() if isinstance(v, (str, int, float, bool))})
        return {k: encode_path(v) if isinstance(v, str) else v for k, v in row.items()}


def decode_or_error(source: Source, name: str | None = None,
                    limits: DecodeLimits = DecodeLimits()) -> Image.Image | ImageDecodeError:
    """The decoded image, or the error that names why it could not be read."""
    try:
        return decode_image(source, max_pixels=limits.max_pixels, max_bytes=limits.max_bytes,
                            max_aspect=limits.max_aspect, name=name)
    except ImageDecodeError as exc:
        return exc


def _predict_each(detector: Detector, images: list[Image.Image], batch_size: int) -> list:
    """Predictions for a batch; if the batch fails, each image alone, so one bad image costs one row."""
    try:
        return detector.predict(images, batch_size=batch_size)
    except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError):
        if len(images) == 1:
            raise
    out = []
    for image in images:
        try:
            out.extend(detector.predict([image], batch_size=1))
        except (RuntimeError, ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
            out.append(ImageDecodeError(None, f"the detector failed on this image ({type(exc).__name__}: {exc})"))
    return out


def score_decoded(detector: Detector, names: Sequence[str], decoded: Sequence[Image.Image | ImageDecodeError],
                  batch_size: int = 32, provenance: Sequence[Provenance | None] | None = None) -> list[ScanResult]:
    """One result per input, in order: decode errors become error rows, the images are scored in batches.

    ``provenance`` (one per input, from :func:`diffsleuth.provenance.read_provenance`) is attached
    to the results as it is; labels are at the detector's ``config.threshold``. A score that is
    not a finite number becomes an error row too, so no row carries NaN.
    """
    images = [item for item in decoded if isinstance(item, Image.Image)]
    predictions = iter(_predict_each(detector, images, batch_size) if images else [])
    threshold = float(detector.config.threshold)
    found = list(provenance) if provenance is not None else [None] * len(names)
    results = []
    for name, item, prov in zip(names, decoded, found):
        pred = item if isinstance(item, ImageDecodeError) else next(predictions)
        if isinstance(pred, ImageDecodeError):
            results.append(ScanResult(name, None, None, error=pred.reason, threshold=threshold, provenance=prov))
        elif not math.isfinite(pred.score):
            results.append(ScanResult(name, None, None, error=f"the detector gave a non-finite score ({pred.score})",
                                      threshold=threshold, provenance=prov))
        else:
            results.append(ScanResult(name, round(pred.score, 6), pred.label, extras=pred.extras,
                                      score_map=pred.score_map, threshold=threshold, provenance=prov,
                                      uncertain_threshold=pred.uncertain_threshold,
                                      outside_domain=pred.outside_domain, outside_overrides=pred.outside_overrides))
    return results


def plan_groups(costs: Sequence[int], budget: int, batch_size: int) -> list[list[int]]:
    """Indices in order, grouped so each group's cost stays within ``budget`` (an item over the
    budget on its own forms a group alone) and no group has more than ``batch_size`` items."""
    groups: list[list[int]] = []
    current: list[int] = []
    spent = 0
    for index, cost in enumerate(costs):
        if current and (spent + cost > budget or len(current) >= batch_size):
            groups.append(current)
            current, spent = [], 0
        current.append(index)
        spent += cost
    if current:
        groups.append(current)
    return groups


@dataclass
class _Group:
    """Sources of one planned group: ``indices`` into ``sources``; ``rows`` are shared by every
    group of the same call (error rows from the headers already in), ``last`` closes that call."""

    names: Sequence[str]
    sources: Sequence[Source]
    found: Sequence[Provenance | None]
    rows: list[ScanResult | None]
    indices: list[int]
    cost: int  # decoded pixels, as the headers declare them
    last: bool


def _plan(names: Sequence[str], sources: Sequence[Source], found: Sequence[Provenance | None],
          budget: int, batch_size: int, threshold: float, run: Callable, limits: DecodeLimits) -> list[_Group]:
    """Headers read (in ``run``), refused ones made error rows, the rest grouped by decoded pixels
    (``budget`` a group); always at least one group (an empty one when every header was refused)."""

    def probe(index: int) -> int | ImageDecodeError:
        try:
            return probe_image(sources[index], max_pixels=limits.max_pixels, max_bytes=limits.max_bytes,
                               max_aspect=limits.max_aspect, name=names[index])
        except ImageDecodeError as exc:
            return exc

    probes = list(run(probe, range(len(sources))))
    rows: list[ScanResult | None] = [
        ScanResult(names[i], None, None, error=p.reason, threshold=threshold, provenance=found[i])
        if isinstance(p, ImageDecodeError) else None for i, p in enumerate(probes)]
    todo = [i for i, p in enumerate(probes) if not isinstance(p, ImageDecodeError)]
    planned = plan_groups([probes[i] for i in todo], budget, batch_size) or [[]]
    return [_Group(names, sources, found, rows, [todo[g] for g in group], sum(probes[todo[g]] for g in group),
                   last=k == len(planned) - 1) for k, group in enumerate(planned)]


def _prepare(detector: Detector, source: Source, name: str, limits: DecodeLimits) -> Image.Image | ImageDecodeError:
    decoded = decode_or_error(source, name=name, limits=limits)
    if isinstance(decoded, ImageDecodeError):
        return decoded
    try:
        return detector.reduce_input(decoded)
    except MemoryError:  # the decoded image is dropped here, so the next files still have room
        return ImageDecodeError(name, "not enough memory to read and decode this image")


def _start_decoding(detector: Detector, group: _Group, limits: DecodeLimits,
                    pool: Executor | None) -> Callable[[], list]:
    """Submit the group's decoding to ``pool`` now; the returned call waits for it, in order.
    Without a pool nothing starts until the call (no overlap, one thread)."""
    jobs = [(detector, group.sources[i], group.names[i], limits) for i in group.indices]
    if pool is None:
        return lambda: [_prepare(*job) for job in jobs]
    futures = [pool.submit(_prepare, *job) for job in jobs]
    return lambda: [future.result() for future in futures]


def _score_groups(detector: Detector, groups: Iterator[_Group], limits: DecodeLimits, batch_size: int,
                  pool: Executor | None) -> Iterator[_Group]:
    """Each group, its rows filled in, in order. While a group is scored the next one decodes in
    ``pool`` when the two together stay within ``max_batch_pixels`` (never more than one ahead);
    otherwise it starts once this one is scored and its pixels are dropped."""
    group = next(groups, None)
    waiting = _start_decoding(detector, group, limits, pool) if group is not None else None
    while group is not None and waiting is not None:
        decoded = waiting()
        following = next(groups, None)  # the next headers are read here, while the pool is idle
        ahead = following is not None and group.cost + following.cost <= limits.max_batch_pixels
        waiting = _start_decoding(detector, following, limits, pool) if ahead else None
        scored = score_decoded(detector, [group.names[i] for i in group.indices], decoded, batch_size,
                               [group.found[i] for i in group.indices])
        del decoded
        for index, result in zip(group.indices, scored):
            group.rows[index] = result
        if following is not None and not ahead:
            waiting = _start_decoding(detector, following, limits, pool)
        yield group
        group = following


def score_sources(detector: Detector, names: Sequence[str], sources: Sequence[Source],
                  limits: DecodeLimits = DecodeLimits(), batch_size: int = 32,
                  pool: Executor | None = None,
                  provenance: Sequence[Provenance | None] | None = None) -> list[ScanResult]:
    """One result per source, in order, with at most ``limits.max_batch_pixels`` decoded per group.

    Headers are read first; a refused header is an error row without decoding. The rest are
    decoded group by group and reduced to what the detector reads; with a ``pool`` the next
    group decodes there while the current one is scored (groups of half the budget then, so the
    two together stay within it).
    """
    found = list(provenance) if provenance is not None else [None] * len(sources)
    budget = limits.max_batch_pixels // 2 if pool is not None else limits.max_batch_pixels
    groups = _plan(names, sources, found, budget, batch_size, float(detector.config.threshold),
                   pool.map if pool is not None else map, limits)
    for _ in _score_groups(detector, iter(groups), limits, batch_size, pool):
        pass
    return groups[0].rows  # type: ignore[return-value]


def scan_paths(
    detector: Detector,
    paths: Sequence[Path],
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
    workers: int = 4,
    provenance: bool = True,
    limits: DecodeLimits = DecodeLimits(),
) -> Iterator[ScanResult]:
    """Yield one :class:`ScanResult` per path, in input order; ``on_progress(n)`` after each batch.

    Files are decoded in a pool of ``workers`` threads, the next group while the current one is
    scored (across batches too), so the model seldom waits for the decoder.

    With ``provenance`` each result carries what the file's metadata says (C2PA, generator
    settings, IPTC, EXIF), read from at most ``limits.max_bytes`` of the file.
    """

    def read(path: Path) -> Provenance | None:
        return read_provenance(path, max_bytes=limits.max_bytes) if provenance else None

    threshold = float(detector.config.threshold)
    with ThreadPoolExecutor(max_workers=workers) as pool:

        def planned() -> Iterator[_Group]:  # chunk by chunk, read only when the pipeline gets there
            for start in range(0, len(paths), batch_size):
                chunk = list(paths[start:start + batch_size])
                found = list(pool.map(read, chunk))
                yield from _plan([str(p) for p in chunk], chunk, found, limits.max_batch_pixels // 2, batch_size,
                                 threshold, pool.map, limits)

        for group in _score_groups(detector, planned(), limits, batch_size, pool):
            if group.last:  # the chunk is complete: its rows, in order
                yield from group.rows  # type: ignore[misc]
                if on_progress is not None:
                    on_progress(len(group.rows))
