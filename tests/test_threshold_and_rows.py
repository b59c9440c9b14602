"""A threshold you choose (scan, serve, Python API) and the provenance columns in every output."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.cli.app import EXIT_OK, EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.detectors import load_detector
from diffsleuth.detectors.base import check_threshold
from diffsleuth.detectors.scanning import row_columns, scan_paths
from diffsleuth.io import decode_image
from provenance_files import camera_jpeg, generator_files
from toy_detector import saved_toy

runner = CliRunner()
ROW_START = ["path", "score", "label", "error", "threshold", "verdict", "detector_verdict", "declared", "declared_by",
             "provenance"]
PIXELS = {"generated": "generated", "real": "no trace found"}  # the toy has no band and no domain check


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return saved_toy(tmp_path_factory.mktemp("toy") / "toy")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    files = {name: path for name, (path, _) in generator_files(folder / "generated").items()
             if name in ("a1111_png", "comfyui_png")}
    files["camera"] = camera_jpeg(folder / "camera.jpg")
    random_photo(7).save(folder / "plain.png")
    files["plain"] = folder / "plain.png"
    return files


def scan_json(*args: str) -> list[dict]:
    result = runner.invoke(app, ["scan", *args, "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    return json.loads(result.stdout)


def test_rows_carry_threshold_verdict_and_provenance_in_the_agreed_order(images, toy):
    rows = {r["path"]: r for r in scan_json(*map(str, images.values()), "--detector", str(toy))}
    stored = load_detector(toy).config.threshold
    for row in rows.values():
        assert list(row)[:10] == ROW_START and row["threshold"] == stored
        assert row["detector_verdict"] == PIXELS[row["label"]]
    generated = rows[str(images["a1111_png"])]  # generator settings: text anyone can write
    assert (generated["declared"], generated["declared_by"], generated["verdict"]) == \
        ("generated", "unsigned", "generated (claimed)")
    assert "AUTOMATIC1111" in generated["provenance"]
    camera = rows[str(images["camera"])]
    assert camera["declared"] == "camera" and camera["verdict"] == camera["detector_verdict"]
    assert "weak" in camera["provenance"]
    plain = rows[str(images["plain"])]
    assert (plain["declared"], plain["declared_by"], plain["provenance"]) == (None, None, None)
    assert plain["verdict"] == plain["detector_verdict"]


def test_no_provenance_leaves_the_columns_empty_and_the_verdict_the_pixels(images, toy):
    (row,) = scan_json(str(images["a1111_png"]), "--detector", str(toy), "--no-provenance")
    assert (row["declared"], row["declared_by"], row["provenance"]) == (None, None, None)
    assert row["verdict"] == row["detector_verdict"] == PIXELS[row["label"]]


def test_csv_header_and_table(images, toy, tmp_path):
    out = tmp_path / "rows.csv"
    result = runner.invoke(app, ["scan", str(images["comfyui_png"]), "--detector", str(toy), "--format", "csv",
                                 "--output", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    (row,) = list(csv.DictReader(io.StringIO(out.read_text())))
    assert list(row) == ROW_START and row["verdict"] == "generated (claimed)"
    table = runner.invoke(app, ["scan", str(images["comfyui_png"]), "--detector", str(toy)])
    assert "generated (claimed)" in table.stdout and "ComfyUI" in table.stdout


@pytest.mark.parametrize("threshold, label", [(0.0, "generated"), (1.0, "real")])
def test_scan_threshold_labels_at_that_value_and_records_it(images, toy, threshold, label):
    rows = scan_json(str(images["plain"]), str(images["camera"]), "--detector", str(toy),
                     "--threshold", str(threshold))
    assert {(r["label"], r["threshold"]) for r in rows} == {(label, threshold)}
    default = scan_json(str(images["plain"]), "--detector", str(toy))
    assert default[0]["score"] == rows[0]["score"]  # the threshold never changes a score


@pytest.mark.parametrize("command", ["scan", "serve"])
@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan"])
def test_threshold_outside_0_1_is_a_usage_error(images, toy, command, bad):
    args = [command, *([str(images["plain"])] if command == "scan" else []), "--detector", str(toy),
            "--threshold", bad]
    result = runner.invoke(app, args)
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output


def test_python_api_threshold(toy, images):
    image = decode_image(images["plain"])
    model = load_detector(toy)
    (stored,) = model.predict([image])
    (low,), (high,) = model.predict([image], threshold=0.0), model.predict([image], threshold=1.0)
    assert (low.label, high.label, low.score) == ("generated", "real", stored.score)
    assert model.config.threshold == load_detector(toy).config.threshold  # predict(threshold=) changes nothing stored
    assert load_detector(toy, threshold=0.0).predict([image])[0].label == "generated"
    for bad in (1.5, -1, math.nan, "high"):
        with pytest.raises(ValueError, match="threshold"):
            check_threshold(bad)
        with pytest.raises(ValueError, match="threshold"):
            model.predict([image], threshold=bad)
    with pytest.raises(ValueError, match="threshold"):
        load_detector(toy, threshold=2)


def test_scan_paths_results_carry_provenance(toy, images):
    model = load_detector(toy)
    results = list(scan_paths(model, [images["a1111_png"], images["plain"]]))
    assert results[0].provenance.declared == "generated" and results[0].provenance.source.startswith("AUTOMATIC1111")
    assert results[1].provenance.declared is None
    assert row_columns(model)[:10] == ROW_START
    assert all(r.provenance is None for r in scan_paths(model, [images["plain"]], provenance=False))


def test_server_rows_carry_the_same_fields(toy, images):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from diffsleuth.server.app import create_app

    files = [("files", ("a.png", images["a1111_png"].read_bytes(), "image/png")),
             ("files", ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg"))]
    served, broken = TestClient(create_app(load_detector(toy, threshold=0.0))).post("/v1/scan", files=files).json()
    (scanned,) = scan_json(str(images["a1111_png"]), "--detector", str(toy), "--threshold", "0")
    assert {k: v for k, v in served.items() if k not in ("path", "score_map")} == \
        {k: v for k, v in scanned.items() if k != "path"}
    assert broken["verdict"] is None and broken["detector_verdict"] is None and broken["threshold"] == 0.0
    assert broken["error"]
    off = TestClient(create_app(load_detector(toy), provenance=False)).post("/v1/scan", files=files[:1]).json()
    assert (off[0]["declared"], off[0]["provenance"]) == (None, None)
    assert off[0]["verdict"] == off[0]["detector_verdict"] == PIXELS[off[0]["label"]]


def test_a_failing_provenance_reader_is_reported_and_the_row_still_scored(images, toy, monkeypatch):
    def broken(*args):
        raise RuntimeError("boom")

    (plain,) = scan_json(str(images["a1111_png"]), "--detector", str(toy), "--no-provenance")
    monkeypatch.setattr("diffsleuth.provenance.reader.metadata_fields", broken)
    (row,) = scan_json(str(images["a1111_png"]), "--detector", str(toy))
    assert row["score"] == plain["score"] and row["error"] is None and row["label"] in ("generated", "real")
    assert row["provenance"] == "not read: metadata (RuntimeError: boom)" and row["declared"] is None


def test_predict_on_files_carries_their_provenance(toy, images):
    model = load_detector(toy)
    from_path, from_bytes, from_pixels = model.predict(
        [images["a1111_png"], images["a1111_png"].read_bytes(), decode_image(images["a1111_png"])])
    for prediction in (from_path, from_bytes):
        assert prediction.provenance.declared == "generated" and prediction.verdict == "generated (claimed)"
        assert prediction.detector_verdict == PIXELS[prediction.label]
    assert from_pixels.provenance is None and from_pixels.verdict == PIXELS[from_pixels.label]
    assert from_pixels.score == pytest.approx(from_path.score, abs=1e-6)
    (skipped,) = model.predict(str(images["a1111_png"]), provenance=False)
    assert skipped.provenance is None and skipped.verdict == skipped.detector_verdict == PIXELS[skipped.label]
