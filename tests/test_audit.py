"""Shortcut audit: cue estimators, flags on synthetic shortcuts, and the JPEG trap of the shared data."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.cli.app import EXIT_FLAGGED, EXIT_OK, EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.evaluation.audit import NO_JPEG, audit_records, equalized_bytes, jpeg_history, quality_from_tables
from diffsleuth.io.datasets import load_records
from diffsleuth.io.degrade import jpeg, parse_degradation

runner = CliRunner()


@pytest.mark.parametrize("quality", [50, 75, 93])
def test_quality_from_quantisation_tables(quality):
    buffer = io.BytesIO()
    random_photo(0).save(buffer, format="JPEG", quality=quality)
    assert quality_from_tables(Image.open(buffer).quantization) == quality
    assert quality_from_tables(None) == NO_JPEG


def test_jpeg_history_found_in_lossless_pixels_and_absent_otherwise():
    photo = random_photo(1, (128, 128))
    strength, quality = jpeg_history(jpeg(photo, 85))
    assert quality == 85 and strength > 0.1
    strength, quality = jpeg_history(photo)
    assert quality == NO_JPEG and strength < 0.05


def test_equalized_bytes_use_the_last_step_as_container():
    buffer = io.BytesIO()
    random_photo(2).save(buffer, format="PNG")
    data = buffer.getvalue()
    as_jpeg = Image.open(io.BytesIO(equalized_bytes(data, parse_degradation("jpeg:70"), 10**7)))
    assert as_jpeg.format == "JPEG" and quality_from_tables(as_jpeg.quantization) == 70
    blurred = Image.open(io.BytesIO(equalized_bytes(data, parse_degradation("blur:1"), 10**7)))
    assert blurred.format == "PNG"


def write_shortcut_set(root: Path) -> Path:
    """Reals: JPEG files with EXIF at 96x80; fakes: PNG files without metadata at 80x96."""
    for label, folder in ((0, root / "0_real"), (1, root / "1_fake")):
        folder.mkdir(parents=True)
        for i in range(8):
            if label == 0:
                exif = Image.Exif()
                exif[0x010F] = "camera maker"
                random_photo(i).save(folder / f"{i}.jpg", quality=80, exif=exif)
            else:
                random_photo(100 + i, (80, 96)).save(folder / f"{i}.png")
    return root


def test_audit_flags_synthetic_shortcuts_and_equalisation_removes_them(tmp_path):
    root = write_shortcut_set(tmp_path / "set")
    cues = {c["name"]: c for c in audit_records(load_records(root), progress=False)["cues"]}
    for name in ("file_format", "jpeg_quality_file", "metadata_items", "width", "height", "jpeg_quality_pixels"):
        assert cues[name]["flagged"] and cues[name]["auc"] > 0.8 and cues[name]["suggestion"], name
    equalized = {c["name"]: c for c in audit_records(load_records(root), equalize="jpeg:90", progress=False)["cues"]}
    for name in ("file_format", "jpeg_quality_file", "metadata_items"):
        assert not equalized[name]["flagged"] and equalized[name]["auc"] == 0.5, name
    assert equalized["width"]["flagged"]  # re-encoding does not change sizes; the audit still says so


def test_audit_cli_usage_errors(tmp_path):
    assert runner.invoke(app, ["audit", str(tmp_path / "missing")]).exit_code == EXIT_USAGE
    root = write_shortcut_set(tmp_path / "set")
    bad = runner.invoke(app, ["audit", str(root), "--equalize", "gif:3"])
    assert bad.exit_code == EXIT_USAGE and "unknown degradation" in bad.output


def test_audit_fail_on_flag_exits_4_only_when_a_cue_is_flagged(tmp_path):
    shortcut = str(write_shortcut_set(tmp_path / "shortcut"))
    assert runner.invoke(app, ["audit", shortcut]).exit_code == EXIT_OK  # flags are warnings by default
    flagged = runner.invoke(app, ["audit", shortcut, "--fail-on-flag"])
    assert flagged.exit_code == EXIT_FLAGGED and "WARNING" in flagged.output
    clean = tmp_path / "clean"
    for label, folder in enumerate((clean / "0_real", clean / "1_fake")):
        folder.mkdir(parents=True)
        for i in range(8):  # both classes: the same kind of PNG, seeds interleaved
            random_photo(2 * i + label).save(folder / f"{i}.png")
    result = runner.invoke(app, ["audit", str(clean), "--fail-on-flag", "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    assert not any(cue["flagged"] for cue in json.loads(result.stdout)["cues"])


def _audit_json(args: list[str]) -> dict[str, dict]:
    result = runner.invoke(app, ["audit", *args, "--format", "json"])
    assert result.exit_code == EXIT_OK, result.output
    report = json.loads(result.stdout)
    for cue in report["cues"]:
        assert set(cue) >= {"name", "auc", "flagged"} and 0.5 <= cue["auc"] <= 1
    return {c["name"]: c for c in report["cues"]}


def test_audit_flags_the_jpeg_history_of_the_shared_reals_until_equalised(shared_data):
    data = str(shared_data / "sd14-vs-unsplash")
    cues = _audit_json([data, "--max-images", "160"])
    assert cues["jpeg_history_strength"]["flagged"] and cues["jpeg_quality_pixels"]["flagged"]
    assert cues["jpeg_history_strength"]["direction"] == "higher for real"
    equalized = _audit_json([data, "--max-images", "160", "--equalize", "jpeg:90"])
    assert not equalized["jpeg_history_strength"]["flagged"] and not equalized["jpeg_quality_pixels"]["flagged"]
