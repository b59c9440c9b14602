"""``diffsleuth calibrate``: the order-statistic threshold, its refusals, and the folder it writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.cli.app import EXIT_OK, EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.detectors import load_detector
from diffsleuth.evaluation.calibration import CalibrationError, choose_threshold, photos_needed
from toy_detector import saved_toy

runner = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("target, confidence, needed", [(0.01, 0.95, 299), (0.05, 0.95, 59), (0.05, 0.5, 20),
                                                        (0.1, 0.9, 22)])
def test_photos_needed(target, confidence, needed):
    assert photos_needed(target, confidence) == needed
    assert (1 - target) ** needed <= 1 - confidence and needed >= 1 / target - 1e-9


def test_threshold_meets_the_target_on_fresh_draws():
    """The guarantee itself: over many calibration sets, the true FPR exceeds the target <= 5% of the time."""
    rng = np.random.default_rng(0)
    target, confidence, n = 0.05, 0.95, 200
    misses = 0
    for _ in range(400):
        cal = choose_threshold(rng.beta(2, 5, n), target, confidence)
        true_fpr = 1 - __import__("scipy").stats.beta.cdf(cal.threshold, 2, 5)
        misses += true_fpr > target
        assert cal.flagged <= cal.allowed_exceedances and cal.fpr_upper_bound <= target + 1e-12
    assert misses / 400 <= 0.08  # 5% expected; binomial slack for 400 runs


def test_ties_and_saturated_scores():
    cal = choose_threshold(np.full(100, 0.3), 0.05, 0.95)
    assert cal.threshold > 0.3 and cal.flagged == 0
    with pytest.raises(CalibrationError, match="100 of these 100 real photos score 1.0"):
        choose_threshold(np.ones(100), 0.05, 0.95)
    with pytest.raises(CalibrationError, match="at least 299"):
        choose_threshold(np.zeros(100), 0.01, 0.95)
    with pytest.raises(CalibrationError, match="--target-fpr must be at least 1e-06 and below 1"):
        choose_threshold(np.zeros(100), 0.0, 0.95)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for i in range(60):
        random_photo(i, (40, 32)).save(folder / f"{i:03d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    fakes = tmp_path_factory.mktemp("fakes")
    for i in range(5):
        random_photo(500 + i, (40, 32)).save(fakes / f"{i}.png")
    return folder, fakes


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return saved_toy(tmp_path_factory.mktemp("toy") / "toy")


def test_target_below_one_over_n_is_refused_with_the_photos_needed(photos, toy, tmp_path):
    folder, _ = photos
    result = runner.invoke(app, ["calibrate", str(folder), "--target-fpr", "0.01", "--output", str(tmp_path / "out"),
                                 "--detector", str(toy)])
    assert result.exit_code == EXIT_USAGE
    assert "needs at least 299 distinct real photos, got 61" in flat(result.output)
    assert not (tmp_path / "out").exists()


def test_unreadable_photos_do_not_count(photos, toy, tmp_path):
    folder, _ = photos
    files = sorted(str(p) for p in folder.glob("*.png"))[:58] + [str(folder / "broken.png")]
    result = runner.invoke(app, ["calibrate", *files, "--target-fpr", "0.05", "--output", str(tmp_path / "out"),
                                 "--detector", str(toy)])
    assert result.exit_code == EXIT_USAGE
    assert "at least 59 readable real photos, got 58" in flat(result.output)
    assert "1 of 59 could not be read" in flat(result.output)


def test_calibrate_writes_a_detector_folder_and_report(photos, toy, tmp_path):
    folder, fakes = photos
    out = tmp_path / "calibrated"
    result = runner.invoke(app, ["calibrate", str(folder), "--target-fpr", "0.05", "--output", str(out),
                                 "--detector", str(toy), "--fakes", str(fakes)])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads((out / "report.json").read_text())
    cal = report["calibration"]
    assert cal["n"] == 60 and report["unreadable"] == 1 and report["fakes"]["n"] == 5
    assert cal["flagged"] <= 3 and cal["fpr_upper_bound"] <= 0.05
    assert (out / "scores_histogram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{cal['threshold']:.6f}" in (out / "report.md").read_text()
    model = load_detector(out)  # the SHA-256 check still passes on the copied weights
    assert model.config.threshold == cal["threshold"] != load_detector(toy).config.threshold
    scanned = runner.invoke(app, ["scan", str(folder), "--detector", str(out), "--format", "json"])
    rows = [r for r in json.loads(scanned.stdout) if r["error"] is None]
    assert {r["threshold"] for r in rows} == {cal["threshold"]}
    assert sum(r["label"] == "generated" for r in rows) == cal["flagged"]
    again = runner.invoke(app, ["calibrate", str(folder), "--target-fpr", "0.05", "--output", str(out),
                                "--detector", str(toy)])
    assert again.exit_code == EXIT_USAGE and "not an empty folder" in flat(again.output)


def test_calibrated_default_detector_folder_loads(tmp_path):
    """The shipped default, calibrated, is a folder that loads on its own (weights copied, hash intact)."""
    from diffsleuth.detectors.registry import resolve_detector_path
    from diffsleuth.evaluation.calibration import write_detector

    out = tmp_path / "default-calibrated"
    out.mkdir()
    write_detector(resolve_detector_path(None), out, 0.75, {"note": "test"})
    model = load_detector(out)
    assert model.config.threshold == 0.75 and model.name == load_detector().name


def test_threshold_from_one_half_holds_on_the_other(shared_data, tmp_path):
    """Target FPR 5% on 160 real photos; the other 160 (same source) must stay at or below ~10%."""
    photos = sorted((shared_data / "imagenet-samples" / "real").glob("*.jpg"))
    if len(photos) < 320:
        pytest.skip("imagenet-samples/real has fewer than 320 photos")
    chosen = photos[::len(photos) // 320][:320]
    first, second = chosen[0::2], chosen[1::2]
    out = tmp_path / "mine"
    result = runner.invoke(app, ["calibrate", *map(str, first), "--target-fpr", "0.05", "--output", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    scanned = runner.invoke(app, ["scan", *map(str, second), "--detector", str(out), "--format", "json",
                                  "--no-provenance"])
    rows = json.loads(scanned.stdout)
    held_out_fpr = sum(r["label"] == "generated" for r in rows) / len(rows)
    assert len(rows) == 160 and held_out_fpr <= 0.10, held_out_fpr


def test_copies_and_links_of_one_photo_count_once(photos, toy, tmp_path):
    """59 copies (and links) of one photo are one photo: refused, not an FPR bound of 4.95% (#32 item 11)."""
    folder, _ = photos
    copies = tmp_path / "copies"
    copies.mkdir()
    original = folder / "000.png"
    for i in range(40):
        (copies / f"copy{i:02d}.png").write_bytes(original.read_bytes())
    for i in range(19):
        (copies / f"link{i:02d}.png").symlink_to(original)
    result = runner.invoke(app, ["calibrate", str(copies), "--target-fpr", "0.05", "--output", str(tmp_path / "out"),
                                 "--detector", str(toy)])
    text = flat(result.output)
    assert result.exit_code == EXIT_USAGE, text
    assert "58 of the 59 real photos are copies" in text
    assert "needs at least 59 distinct real photos, got 1 (58 copies left out)" in text
    assert not (tmp_path / "out").exists()


def test_duplicates_are_dropped_and_reported(photos, toy, tmp_path):
    folder, _ = photos
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in sorted(folder.glob("*.png")):
        (mixed / path.name).write_bytes(path.read_bytes())
    for i in range(5):
        (mixed / f"again{i}.png").write_bytes((folder / "001.png").read_bytes())
    out = tmp_path / "out"
    result = runner.invoke(app, ["calibrate", str(mixed), "--target-fpr", "0.05", "--output", str(out),
                                 "--detector", str(toy)])
    assert result.exit_code == EXIT_OK, result.output
    assert "5 of the 66 real photos are copies" in flat(result.output)
    report = json.loads((out / "report.json").read_text())
    assert report["duplicates"] == 5 and report["calibration"]["n"] == 60 and report["unreadable"] == 1
    assert "5 copies of another photo's bytes" in (out / "report.md").read_text()


def test_unwritable_output_is_refused_before_scoring(photos, toy, tmp_path, monkeypatch):
    """Exit 2 in one line before any photo is scored (#32 item 14)."""
    import diffsleuth.cli.calibrate as calibrate_cli

    folder, _ = photos
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(calibrate_cli, "_scores", lambda *a, **k: pytest.fail("scored before refusing"))
    result = runner.invoke(app, ["calibrate", str(folder), "--target-fpr", "0.05", "--output",
                                 str(blocker / "out"), "--detector", str(toy)])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    assert f"--output {blocker / 'out'} cannot be written" in flat(result.output)
    assert flat(result.output).startswith("error:") and flat(result.output).count("error") == 1  # one message


@pytest.mark.parametrize("option, value, words", [
    ("--target-fpr", "5e-324", "--target-fpr must be at least 1e-06 and below 1"),
    ("--target-fpr", "1e-300", "--target-fpr must be at least 1e-06"),
    ("--target-fpr", "1", "--target-fpr must be at least 1e-06 and below 1"),
    ("--target-fpr", "nan", "--target-fpr must be"),
    ("--confidence", "1.5", "--confidence must be between 0 and 1"),
])
def test_target_and_confidence_out_of_range_name_the_option(photos, toy, tmp_path, option, value, words):
    folder, _ = photos
    result = runner.invoke(app, ["calibrate", str(folder), option, value, "--output", str(tmp_path / "out"),
                                 "--detector", str(toy)])
    assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output
    assert words in flat(result.output)
    assert not (tmp_path / "out").exists()
