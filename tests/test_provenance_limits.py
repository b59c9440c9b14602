"""Hostile metadata: bounded in total per file, and never able to stop the pixel score."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import pytest
from PIL import Image

from conftest import random_photo
from diffsleuth.io.decode import decode_image, png_without_text, probe_image
from diffsleuth.provenance import read_provenance
from provenance_files import A1111_PARAMETERS

MiB = 1 << 20


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(extra_before: bytes = b"", extra_after: bytes = b"", seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    random_photo(seed).save(buffer, format="PNG")
    data = buffer.getvalue()
    ihdr_end = 8 + 25
    return data[:ihdr_end] + extra_before + data[ihdr_end:-12] + extra_after + data[-12:]


def _ztxt_bombs(count: int, inflated: int) -> bytes:
    payload = zlib.compress(b"A" * inflated, 9)
    return b"".join(_chunk(b"zTXt", b"bomb%d\0\0" % i + payload) for i in range(count))


def test_many_ztxt_bombs_are_cut_in_total_and_the_memory_stays_bounded():
    """600 chunks of ~8 MiB each took 50 s and 4.85 GB; the whole file now yields at most 16 MiB of text."""
    settings = _chunk(b"tEXt", b"parameters\0" + A1111_PARAMETERS.encode())
    data = _png(settings + _ztxt_bombs(60, 4 * MiB))  # 240 MiB of text if every chunk were inflated
    assert len(data) < 2 * MiB
    tracemalloc.start()
    try:
        found = read_provenance(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * MiB  # 24 MiB here; 250 MiB when every chunk is inflated
    assert found.declared == "generated"  # what came before the bombs is still read
    assert any(error.startswith("metadata cut") for error in found.errors)
    assert "+1 more" in found.summary and any("metadata cut" in line for line in found.details)


def test_the_limit_is_per_file_and_can_be_set():
    small = _png(_ztxt_bombs(1, 64 * 1024))
    assert read_provenance(small).errors == []
    cut = read_provenance(small, max_metadata_bytes=1024)
    assert cut.errors and cut.errors[0].startswith("metadata cut")


def test_one_huge_xmp_of_tag_bait_is_read_in_linear_time():
    bait = "<x:a " * 200_000 + "<x:b>" * 200_000 + '\ta:b="' * 100_000
    itxt = _chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + bait.encode())
    found = read_provenance(_png(itxt))
    assert found.declared is None and found.errors == []


@pytest.mark.parametrize("chunk", [
    _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (2 * MiB), 9)),  # ~2 KB, over Pillow's 1 MB text limit
    _chunk(b"zTXt", b"Comment\0\x05garbage"),  # an unknown compression method
    _chunk(b"iTXt", b"Comment\0\x01\0\0\0" + zlib.compress(b"A" * (2 * MiB), 9)),
])
@pytest.mark.parametrize("where", ["before", "after"])
def test_text_chunks_pillow_refuses_never_stop_the_pixel_score(chunk, where):
    clean = _png()
    hostile = _png(chunk) if where == "before" else _png(extra_after=chunk)
    assert png_without_text(hostile) == clean and png_without_text(clean) is clean
    assert probe_image(hostile) == probe_image(clean)
    assert decode_image(hostile).tobytes() == decode_image(clean).tobytes()
    assert read_provenance(hostile).declared is None


def test_a_scan_scores_a_png_with_a_hostile_text_chunk_like_its_clean_copy(tmp_path):
    from diffsleuth.detectors.scanning import scan_paths
    from toy_detector import ToyDetector, ToyConfig

    bomb = _chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"A" * (2 * MiB), 9))
    (tmp_path / "clean.png").write_bytes(_png())
    (tmp_path / "hostile.png").write_bytes(_png(bomb))
    Image.open(tmp_path / "clean.png").verify()
    rows = list(scan_paths(ToyDetector(ToyConfig()).eval(), [tmp_path / "clean.png", tmp_path / "hostile.png"]))
    assert [r.error for r in rows] == [None, None]
    assert rows[0].score == pytest.approx(rows[1].score)


def test_unreadable_exif_never_stops_the_pixel_score():
    """A 40-byte garbage EXIF block made PNG and WebP files unscorable (orientation could not be read)."""
    garbage = b"\xff" * 40
    clean_png, hostile_png = _png(), _png(_chunk(b"eXIf", garbage))
    assert decode_image(hostile_png).tobytes() == decode_image(clean_png).tobytes()
    webp = io.BytesIO()
    random_photo(0).save(webp, "WEBP", lossless=True, exif=b"Exif\0\0" + garbage)
    assert decode_image(webp.getvalue()).size == random_photo(0).size
    for data in (hostile_png, webp.getvalue()):
        found = read_provenance(data)
        assert found.declared is None and found.summary.startswith("not read: exif (SyntaxError")
    settings = _chunk(b"tEXt", b"parameters\0" + A1111_PARAMETERS.encode())
    both = read_provenance(_png(_chunk(b"eXIf", garbage) + settings))
    assert both.declared == "generated" and both.errors[0].startswith("exif (")  # the text is still read
