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


def refuse_loading(*args, **kwargs):
    raise AssertionError("the detector was loaded")


@pytest.mark.parametrize("suffix", ["csv", "json", "jsonl"])
def test_output_format_follows_the_file_name(mixed, toy, tmp_path, suffix):
    _, good, _ = mixed
    out = tmp_path / f"scores.{suffix}"
    result = runner.invoke(app, ["scan", str(good["png"]), "--detector", str(toy), "-o", str(out)])
    assert result.exit_code == EXIT_OK, result.output
    text = out.read_text()
    assert "━" not in text and "│" not in text
    rows = read_rows(out, "csv") if suffix == "csv" else (json.loads(text) if suffix == "json" else
                                                          read_rows(out, "jsonl"))
    assert [r["path"] for r in rows] == [str(good["png"])]


@pytest.mark.parametrize("args", [["-o", "x.txt"], ["-o", "x.csv", "--format", "table"],
                                  ["-o", "x.json", "--format", "csv"], ["-o", "x.csv", "--format", "jsonl"]])
def test_a_table_into_a_file_or_a_contradicting_format_is_refused_before_loading(mixed, toy, tmp_path,
                                                                               monkeypatch, args):
    _, good, _ = mixed
    monkeypatch.setattr("diffsleuth.detectors.registry.load_detector", refuse_loading)
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    result = runner.invoke(app, ["scan", str(good["png"]), "--detector", str(toy), *args])
    assert result.exit_code == EXIT_USAGE
    assert len(result.output.strip().splitlines()) == 1 and "error:" in result.output
    assert not list(tmp_path.iterdir())


def test_mistyped_paths_and_empty_globs_fail_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setattr("diffsleuth.detectors.registry.load_detector", refuse_loading)
    missing = tmp_path / "runs" / "nope.png"
    result = runner.invoke(app, ["scan", str(missing), str(missing), str(tmp_path / "*.webp")])
    assert result.exit_code == EXIT_USAGE
    assert f"{missing}: not found" in result.output and "*.webp: no file matches" in result.output
    assert "Traceback" not in result.output


def test_a_missing_path_beside_good_ones_is_warned_at_once_and_gets_its_row(mixed, toy, tmp_path):
    _, good, _ = mixed
    missing = tmp_path / "typo.png"
    result = runner.invoke(app, ["scan", str(good["png"]), str(missing), str(tmp_path / "*.avif"),
                                 "--detector", str(toy), "--format", "json"])
    assert result.exit_code == EXIT_PARTIAL
    assert f"warning: {missing}: not found" in result.stderr and "*.avif: no file matches" in result.stderr
    rows = {row["path"]: row for row in json.loads(result.stdout)}
    assert "not found" in rows[str(missing)]["error"] and rows[str(good["png"])]["error"] is None


def test_resume_with_nothing_left_does_not_load_the_model(mixed, toy, tmp_path, monkeypatch):
    _, good, _ = mixed
    out = tmp_path / "scores.csv"
    args = ["scan", str(good["png"]), "--detector", str(toy), "--output", str(out)]
    assert runner.invoke(app, args).exit_code == EXIT_OK
    before = out.read_text()
    monkeypatch.setattr("diffsleuth.detectors.registry.load_detector", refuse_loading)
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == EXIT_OK, again.output
    assert "1 of 1 inputs already there, 0 to scan" in again.stderr and out.read_text() == before


def test_unknown_detector_message_keeps_both_quotes(mixed):
    _, good, _ = mixed
    result = runner.invoke(app, ["scan", str(good["png"]), "--detector", "runs/nope"])
    assert result.exit_code == EXIT_USAGE
    assert "error: 'runs/nope' is neither" in result.stderr


def test_messages_are_not_wrapped_when_stderr_is_not_a_terminal(mixed, toy, tmp_path):
    _, good, _ = mixed
    out = tmp_path / ("a-rather-long-folder-name-" * 6) / "scores.csv"
    result = runner.invoke(app, ["scan", str(good["png"]), "--detector", str(toy), "-o", str(out)])
    assert result.exit_code == EXIT_OK
    assert f"wrote 1 rows to {out}\n" in result.stderr


def test_summary_counts_verdicts_and_folder_walks_count_what_they_skip(mixed, toy, tmp_path):
    _, good, _ = mixed
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(good["png"].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "raw.xcf").write_bytes(b"gimp")
    result = runner.invoke(app, ["scan", str(folder), "--detector", str(toy), "--format", "json", "--summary"])
    assert result.exit_code == EXIT_OK, result.output
    assert len(json.loads(result.stdout)) == 1
    assert "skipped 2 files in the folders" in result.stderr and ".txt: 1" in result.stderr
    assert "1 inputs: 1 " in result.stderr and "0 unreadable" in result.stderr


def test_the_table_shows_the_threshold_rounded_and_drops_empty_columns(mixed, toy):
    _, good, _ = mixed
    result = runner.invoke(app, ["scan", str(good["png"]), "--detector", str(toy), "--threshold", "0.123456789012345"])
    assert result.exit_code == EXIT_OK
    header = result.stdout.splitlines()[0].split()
    assert "error" not in header and header[0] == "path"
    assert "0.1235 or more reads as generated" in flat(result.stdout) and "0.123456789" not in result.stdout


def table_rows():
    base = {"label": "generated", "error": None, "threshold": 0.5861448049545288, "declared": None}
    return [
        {**base, "path": "photos/2024/holiday-in-the-mountains/very_long_file_name_of_a_camera_export.jpeg",
         "score": 0.0123456, "verdict": "generated (claimed)", "detector_verdict": "no trace found",
         "provenance": "A1111 parameters text (unsigned): Steps: 20, Sampler: Euler a, CFG scale: 7"},
        {**base, "path": "photos/x.png", "score": 0.91, "verdict": "generated", "detector_verdict": "generated",
         "provenance": None},
    ]


def test_the_table_fits_80_columns_folding_names_at_separators():
    from diffsleuth.cli.scan_output import OutputFormat, render

    text = render(table_rows(), OutputFormat.table, terminal_width=80)
    plain = click_unstyle(text)
    lines = plain.rstrip("\n").splitlines()
    assert all(len(line) <= 80 for line in lines), plain
    assert "error" not in lines[0]  # empty in every row: no column for it
    path_cells = [line.split("│")[0].strip() for line in lines[2:] if "│" in line]
    first = path_cells[:path_cells.index("")]
    assert "".join(first) == table_rows()[0]["path"] and len(first) > 1
    assert all(cell[-1] in "/-_. " for cell in first[:-1]), first  # folded after separators, not mid-word
    verdicts = " ".join(" ".join(line.split("│")[1].split()) for line in lines[2:] if "│" in line)
    assert "generated (claimed) · detector: no trace found" in verdicts
    assert "0.5861 or more" in " ".join(plain.split()) and "0.58614480" not in plain
    assert "0.0123" in plain


def test_the_table_uses_the_verdict_alone_when_the_detector_agrees_or_the_key_is_absent():
    from diffsleuth.cli.scan_table import verdict_text

    assert verdict_text({"verdict": "generated", "detector_verdict": "generated"}) == "generated"
    assert verdict_text({"verdict": "real", "label": "real"}) == "real"
    assert verdict_text({"verdict": None, "label": None, "detector_verdict": None}) == ""


def click_unstyle(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
