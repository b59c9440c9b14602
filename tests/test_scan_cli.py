from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from diffsleuth.cli.app import EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
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


def interrupting_loader(after_calls: int):
    """``load_detector`` whose model raises KeyboardInterrupt on its ``after_calls + 1``-th batch."""
    from diffsleuth.detectors import load_detector

    def load(*args, **kwargs):
        model = load_detector(*args, **kwargs)
        predict, calls = model.predict, []

        def predict_then_interrupt(images, batch_size=32):
            calls.append(len(images))
            if len(calls) > after_calls:
                raise KeyboardInterrupt
            return predict(images, batch_size=batch_size)

        model.predict = predict_then_interrupt
        return model

    return load


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_interrupted_scan_keeps_its_rows_and_resume_finishes_it(mixed, toy, tmp_path, monkeypatch, fmt):
    _, good, _ = mixed
    inputs = [str(p) for p in list(good.values())[:6]]
    out = tmp_path / f"scores.{fmt}"
    args = ["scan", *inputs, "--detector", str(toy), "--format", fmt, "--output", str(out), "--batch-size", "2"]

    with monkeypatch.context() as patch:
        patch.setattr("diffsleuth.detectors.registry.load_detector", interrupting_loader(after_calls=2))
        stopped = runner.invoke(app, args)
    assert stopped.exit_code == EXIT_INTERRUPTED and "--resume" in flat(stopped.output)
    partial = read_rows(out, fmt)
    assert [r["path"] for r in partial] == inputs[:4]

    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == EXIT_OK, resumed.output
    assert "4 of 6 inputs already there" in flat(resumed.output)
    finished = read_rows(out, fmt)
    assert finished[:4] == partial
    fresh = runner.invoke(app, args[:-4] + ["--output", str(tmp_path / f"fresh.{fmt}")])
    assert fresh.exit_code == EXIT_OK
    assert finished == read_rows(tmp_path / f"fresh.{fmt}", fmt)


def flat(text: str) -> str:
    """Messages as one line: the console wraps long paths."""
    return " ".join(text.split())


def read_rows(path, fmt):
    text = path.read_text()
    if fmt == "csv":
        return list(csv.DictReader(io.StringIO(text)))
    return [json.loads(line) for line in text.splitlines()]


def test_resume_cuts_a_line_torn_by_a_killed_run(mixed, toy, tmp_path):
    _, good, _ = mixed
    first, second = str(good["png"]), str(good["jpeg"])
    out = tmp_path / "scores.csv"
    args = ["scan", first, second, "--detector", str(toy), "--format", "csv", "--output", str(out)]
    assert runner.invoke(app, args[:2] + args[3:]).exit_code == EXIT_OK
    out.write_text(out.read_text() + second[:5])
    assert runner.invoke(app, [*args, "--resume"]).exit_code == EXIT_OK
    assert [r["path"] for r in read_rows(out, "csv")] == [first, second]


def test_resume_refuses_a_file_it_cannot_append_to(mixed, toy, tmp_path):
    _, good, _ = mixed
    args = ["scan", str(good["png"]), "--detector", str(toy), "--resume"]
    other_columns = tmp_path / "other.csv"
    other_columns.write_text("path,probability\nx.png,0.5\n")
    result = runner.invoke(app, [*args, "--format", "csv", "--output", str(other_columns)])
    assert result.exit_code == EXIT_USAGE and "other.csv" in flat(result.output)
    not_rows = tmp_path / "notes.jsonl"
    not_rows.write_text("hello\n")
    result = runner.invoke(app, [*args, "--format", "jsonl", "--output", str(not_rows)])
    assert result.exit_code == EXIT_USAGE and "notes.jsonl, line 1" in flat(result.output)
    assert not_rows.read_text() == "hello\n"
    result = runner.invoke(app, [*args, "--format", "json", "--output", str(tmp_path / "x.json")])
    assert result.exit_code == EXIT_USAGE and "--resume needs" in flat(result.output)
