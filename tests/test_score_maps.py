"""Score-map overlays: one colour scale, drawn with Pillow on the base install, and a map never stops a scan."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, random_photo
from diffsleuth.detectors.scanning import ScanResult
from diffsleuth.detectors.score_maps import (ALPHA_AT_THRESHOLD, ALPHA_MAX, GENERATED_RGB, cell_alpha, drawable,
                                             map_scale, overlay_name, overlay_rgba, render_overlay, write_map)
from diffsleuth.io.guards import encode_path
from toy_detector import saved_toy_map

MAX_PIXELS = 10_000_000


def test_only_cells_at_or_above_the_threshold_are_coloured_and_never_opaque():
    grid = np.array([[0.0, 0.39, 0.4], [0.7, 1.0, np.nan]])
    alpha = cell_alpha(grid, 0.4)
    assert alpha.tolist()[0] == [0.0, 0.0, pytest.approx(ALPHA_AT_THRESHOLD)]
    assert alpha[1, 0] == pytest.approx(ALPHA_AT_THRESHOLD + (ALPHA_MAX - ALPHA_AT_THRESHOLD) * 0.5)
    assert alpha[1, 1] == pytest.approx(ALPHA_MAX) and alpha[1, 2] == 0.0
    assert ALPHA_MAX <= 0.6  # the picture always shows through
    other = cell_alpha(np.array([[2.0, 3.0], [4.0, 6.0]]), None, probability=False)
    assert other[0, 0] == 0.0 and other[1, 1] == pytest.approx(ALPHA_MAX)
    rgba = np.asarray(overlay_rgba(grid, 0.4))
    assert rgba.shape == (2, 3, 4) and tuple(rgba[1, 1, :3]) == GENERATED_RGB
    assert rgba[0, 0, 3] == 0 and rgba[1, 1, 3] == round(ALPHA_MAX * 255)


def test_the_page_is_handed_the_same_scale(tmp_path):
    import html
    import re

    from fastapi.testclient import TestClient

    from diffsleuth.detectors import load_detector
    from diffsleuth.server.app import create_app

    page = TestClient(create_app(load_detector(saved_toy_map(tmp_path / "toy")))).get("/")
    found = re.search(r'data-map-scale="([^"]*)"', page.text)
    assert found and json.loads(html.unescape(found.group(1))) == map_scale()


def test_the_overlay_leaves_the_picture_visible_and_untouched_below_the_threshold(tmp_path):
    picture = Image.new("RGB", (200, 100), (0, 0, 255))
    out = render_overlay(picture, np.array([[0.2, 1.0]]), "blue.png: detector score 0.9", tmp_path / "o.png",
                         threshold=0.5)
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width >= 200 and png.height > 100
        left = (png.width - 200) // 2
        clear, red = png.getpixel((left + 50, 50)), png.getpixel((left + 150, 50))
    assert clear == (0, 0, 255)
    assert red[0] > 100 and red[2] >= 255 * (1 - ALPHA_MAX) - 2  # red over it, the blue still seen
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_single_cell_map_is_not_drawn(tmp_path):
    assert not drawable(np.array([[0.9]])) and not drawable(None) and drawable(np.zeros((1, 2)))
    result = ScanResult("x.png", 0.9, "generated", score_map=np.array([[0.9]], dtype=np.float32), threshold=0.5)
    assert write_map(tmp_path / "maps", result, MAX_PIXELS, "P(generated)") == 0
    assert not (tmp_path / "maps").exists()


def test_a_map_that_cannot_be_written_is_a_warning_not_an_exception(tmp_path, capsys):
    source = tmp_path / "[bold]x.png"
    random_photo(0, (64, 48)).save(source)
    blocker = tmp_path / "maps"
    blocker.write_text("a file where the folder should be")
    result = ScanResult(str(source), 0.9, "generated", score_map=np.ones((2, 2), np.float32), threshold=0.5)
    assert write_map(blocker, result, MAX_PIXELS, "P(generated)") == 0
    gone = ScanResult(str(tmp_path / "gone.png"), 0.9, "generated", score_map=np.ones((2, 2)), threshold=0.5)
    assert write_map(tmp_path / "ok", gone, MAX_PIXELS, "P(generated)") == 0
    said = capsys.readouterr().err
    assert "no score map for" in said and "[bold]x.png" in said and "gone.png" in said


def test_overlays_are_drawn_without_matplotlib(tmp_path):
    """The base install has no matplotlib: drawing a map must not need it."""
    random_photo(1, (120, 90)).save(tmp_path / "photo.png")
    script = f"""
import sys
sys.modules["matplotlib"] = None  # import matplotlib now raises ImportError
import numpy as np
from pathlib import Path
from diffsleuth.detectors.scanning import ScanResult
from diffsleuth.detectors.score_maps import write_map
result = ScanResult({str(tmp_path / "photo.png")!r}, 0.8, "generated", score_map=np.array([[0.1, 0.9], [0.7, 0.2]]),
                    threshold=0.5)
assert write_map(Path({str(tmp_path / "maps")!r}), result, 10_000_000, "P(generated)") == 1
assert write_map(Path({str(tmp_path / "maps")!r}), result, 10_000_000, "LaRE / image max") == 1
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "maps").iterdir()] == [overlay_name(str(tmp_path / "photo.png"))]


def test_overlay_names_keep_any_file_name_apart_and_safe():
    raw = os.fsdecode(b"caf\xe9 \xff.png")  # not UTF-8: lone surrogates in Python
    names = [overlay_name(encode_path(p)) for p in (raw, os.fsdecode(b"caf\xe9 \xfe.png"), "caf\u00e9 .png",
                                                    "a/../x.png", "b/x.png", "[red]x.png")]
    assert len(set(names)) == len(names)
    for name in names:
        name.encode("ascii")
        assert name.endswith(".png") and "/" not in name and not name.startswith(".")


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_scan_with_maps_keeps_every_row_whatever_the_file_names(tmp_path, fmt):
    """#32: a name that is not UTF-8 stopped `scan --maps` after two rows (TypeError from set_text)."""
    from typer.testing import CliRunner

    from diffsleuth.cli.main import app

    folder = tmp_path / "in"
    folder.mkdir()
    names = [b"a.png", b"b\xff\xfe.png", b"c [bold]x.png", b"d\xe9.png"]
    for i, name in enumerate(names):
        random_photo(i, (96, 80)).save(os.path.join(os.fsencode(folder), name), format="PNG")
    detector = saved_toy_map(tmp_path / "toy")
    maps = tmp_path / "maps"
    out = tmp_path / f"rows.{fmt}"
    result = CliRunner().invoke(app, ["scan", str(folder), "-d", str(detector), "--format", fmt, "--output", str(out),
                                      "--maps", str(maps)])
    assert result.exit_code == 0, result.output
    if fmt == "json":
        rows = json.loads(out.read_text(encoding="utf-8"))
    else:
        import csv

        rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert len(rows) == 4 and all(not row["error"] for row in rows)
    written = sorted(p.name for p in maps.iterdir())
    assert written == sorted(overlay_name(row["path"]) for row in rows)
    for name in written:
        with Image.open(maps / name) as png:
            assert png.format == "PNG"
