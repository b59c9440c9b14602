from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from diffsleuth.cli.app import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from diffsleuth.cli.main import app
from imagefiles import write_broken_files, write_good_files
from toy_detector import saved_toy

runner = CliRunner()


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    good = write_good_files(folder / "good")
    broken = write_broken_files(folder / "broken")
    return folder, good, broken


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return saved_toy(tmp_path_factory.mktemp("toy") / "toy")


def test_scan_mixed_folder_scores_good_and_names_bad(mixed, toy):
    folder, good, broken = mixed
    before = sorted(p.name for p in folder.rglob("*"))
    result = runner.invoke(app, ["scan", str(folder), "--detector", str(toy), "--format", "json"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    rows = {row["path"]: row for row in json.loads(result.stdout)}
    assert len(rows) == len(good) + len(broken)
    for path in good.values():
        row = rows[str(path)]
        assert row["error"] is None and 0 <= row["score"] <= 1 and row["label"] in ("generated", "real")
    for path in broken.values():
        row = rows[str(path)]
        assert row["score"] is None and row["label"] is None and row["error"]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_scan_csv_has_the_same_columns_and_writes_file(mixed, toy, tmp_path):
    _, good, _ = mixed
    out = tmp_path / "out" / "scores.csv"
    result = runner.invoke(app, ["scan", str(good["png"]), str(good["jpeg"]), "--detector", str(toy),
                                 "--format", "csv", "--output", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["path"] for r in rows] == [str(good["png"]), str(good["jpeg"])]
    assert set(rows[0]) >= {"path", "score", "label", "error"}


def test_scan_table_and_glob(mixed, toy):
    folder, _, _ = mixed
    result = runner.invoke(app, ["scan", str(folder / "good" / "*.jp*g"), "--detector", str(toy)])
    assert result.exit_code == EXIT_OK, result.output
    assert "photo.jpg" in result.stdout and "cmyk.jpg" in result.stdout


def test_scan_usage_errors(tmp_path, toy):
    assert runner.invoke(app, ["scan", str(tmp_path), "--detector", str(toy)]).exit_code == EXIT_USAGE
    result = runner.invoke(app, ["scan", str(tmp_path), "--detector", "nope"])
    assert result.exit_code == EXIT_USAGE
    bad_device = runner.invoke(app, ["scan", __file__, "--detector", str(toy), "--device", "tpu"])
    assert bad_device.exit_code == EXIT_USAGE and "Traceback" not in bad_device.output


def test_scan_scores_match_the_python_api(mixed, toy):
    from diffsleuth.detectors import load_detector
    from diffsleuth.io import decode_image

    _, good, _ = mixed
    result = runner.invoke(app, ["scan", str(good["png"]), "--detector", str(toy), "--format", "json"])
    (row,) = json.loads(result.stdout)
    (prediction,) = load_detector(toy).predict([decode_image(good["png"])])
    assert row["score"] == pytest.approx(prediction.score, abs=1e-6)
