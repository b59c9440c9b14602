"""Decoding overlaps scoring in a scan: same rows in the same order, bounded decoded pixels.

A fake detector (no torch) scores an image by its mean pixel and counts the reduced images that
are alive (decoded, not yet scored); its ``predict`` sleeps so the next group has time to decode.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from diffsleuth.detectors import scanning
from diffsleuth.detectors.scanning import DecodeLimits, scan_paths, score_sources

SIDE = 32


class CountingDetector:
    """Scores are each image's mean pixel; ``peak`` is the most reduced images alive at once."""

    extra_columns: tuple[str, ...] = ()

    def __init__(self, pause: float = 0.05) -> None:
        self.config = SimpleNamespace(threshold=0.5)
        self.pause = pause
        self.lock = threading.Lock()
        self.alive = self.peak = 0
        self.batches: list[int] = []

    def reduce_input(self, image: Image.Image) -> Image.Image:
        with self.lock:
            self.alive += 1
            self.peak = max(self.peak, self.alive)
        return image

    def predict(self, images, batch_size: int = 32):
        time.sleep(self.pause)
        with self.lock:
            self.alive -= len(images)
            self.batches.append(len(images))
        return [SimpleNamespace(score=float(np.asarray(im).mean()) / 255, label="real", extras={}, score_map=None,
                                uncertain_threshold=None, outside_domain=None, outside_overrides=False) for im in images]


@pytest.fixture()
def files(tmp_path):
    """14 files: index 3 is not an image, index 8 is over the pixel limit the tests set."""
    paths = []
    rng = np.random.default_rng(0)
    for index in range(14):
        path = tmp_path / f"{index:02d}.png"
        if index == 3:
            path.write_bytes(b"not an image at all")
        else:
            side = 2 * SIDE if index == 8 else SIDE
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


LIMITS = DecodeLimits(max_pixels=2 * SIDE * SIDE, max_batch_pixels=4 * SIDE * SIDE)
"""Groups of two images (half the budget), one group decoding ahead."""


def expected_rows(files):
    """What a scan must give: scored sequentially, one file at a time, without any pool."""
    detector = CountingDetector(pause=0)
    names = [str(p) for p in files]
    return [score_sources(detector, [name], [path], LIMITS, batch_size=1)[0] for name, path in zip(names, files)]


def summary(rows):
    return [(r.path, r.score, r.label, r.error) for r in rows]


def test_scan_rows_and_order_are_unchanged(files):
    detector = CountingDetector()
    rows = list(scan_paths(detector, files, batch_size=6, workers=4, provenance=False, limits=LIMITS))
    assert summary(rows) == summary(expected_rows(files))
    assert rows[3].error and rows[8].error and sum(r.error is not None for r in rows) == 2


def test_one_group_decodes_ahead_and_never_more(files):
    detector = CountingDetector()
    progress = []
    list(scan_paths(detector, files, batch_size=6, workers=4, provenance=False, limits=LIMITS,
                    on_progress=progress.append))
    assert progress == [6, 6, 2]
    assert max(detector.batches) == 2  # groups of half the budget
    assert detector.peak == 4  # the group being scored and the next one, decoded meanwhile: overlap, bounded


def test_groups_too_big_to_overlap_decode_one_at_a_time(files):
    detector = CountingDetector()
    tight = DecodeLimits(max_pixels=LIMITS.max_pixels, max_batch_pixels=SIDE * SIDE + SIDE)
    rows = list(scan_paths(detector, files, batch_size=6, workers=4, provenance=False, limits=tight))
    assert [r.path for r in rows] == [str(p) for p in files]
    assert detector.peak == 1  # two groups would exceed the budget: no decoding ahead


def test_score_sources_with_a_pool_matches_without(files):
    names = [str(p) for p in files]
    with ThreadPoolExecutor(4) as pool:
        pooled = score_sources(CountingDetector(), names, files, LIMITS, batch_size=32, pool=pool)
    assert summary(pooled) == summary(score_sources(CountingDetector(0), names, files, LIMITS, batch_size=32))


def test_a_failing_decode_is_still_an_error_row_when_decoded_ahead(files, monkeypatch):
    decode = scanning.decode_image

    def failing(source, **kwargs):
        if str(source).endswith("05.png"):
            raise scanning.ImageDecodeError(str(source), "truncated")
        return decode(source, **kwargs)

    monkeypatch.setattr(scanning, "decode_image", failing)
    rows = list(scan_paths(CountingDetector(), files, batch_size=6, provenance=False, limits=LIMITS))
    assert [r.path for r in rows] == [str(p) for p in files]
    assert rows[5].error == "truncated" and rows[6].error is None and rows[6].score is not None
