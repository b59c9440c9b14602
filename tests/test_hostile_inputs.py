"""Hostile inputs: every one gives a row, memory stays bounded, no name is lost, no work is lost.

The end-to-end case runs ``diffsleuth scan`` in a subprocess under a 4 GB address-space limit and
a time limit, on a folder holding each hostile file the hardening issue found.
"""

from __future__ import annotations

import csv
import io
import json
import re
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import random_photo
from diffsleuth.cli.app import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE
from diffsleuth.cli.main import app
from diffsleuth.cli.scan_output import OutputFormat, csv_line, written_rows
from diffsleuth.detectors import load_detector
from diffsleuth.detectors.scanning import DecodeLimits, plan_groups, row_columns, scan_paths
from diffsleuth.io.datasets import expand_inputs
from diffsleuth.io.decode import ImageDecodeError, decode_image, probe_image
from diffsleuth.io.guards import decode_path, encode_path
from diffsleuth.io.preprocess import pad_to, padded_crop
from imagefiles import thin_png
from toy_detector import saved_toy

MEMORY_CAP = 4 << 30
ODD_NAMES = [b"cr\r.png", b"lf\n.png", b"both\r\n.png", b"bad\xff\xfe.png", b"back\\udcff.png",
             b'quote",comma.png']
runner = CliRunner()


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``diffsleuth ARGS`` in a subprocess under the memory cap and a time limit."""
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    return subprocess.run([sys.executable, "-m", "diffsleuth", *args], capture_output=True, timeout=timeout,
                          preexec_fn=_cap_memory, env=env)


def _deep_folder(root: Path) -> Path:
    """Folders nested deeper than PATH_MAX (4096 bytes) with an image at the bottom."""
    os.mkdir(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            inner = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("bottom.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(out, _png_bytes())
        os.close(out)
    finally:
        os.close(fd)
    return root


def _png_bytes(seed: int = 1, size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    random_photo(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> tuple[Path, list[str], set[str]]:
    """The hostile folder, the scan arguments, and the file names every row must carry."""
    base = tmp_path_factory.mktemp("hostile")
    folder = base / "in"
    folder.mkdir()
    expected = set()

    def add(name: str | bytes, data: bytes) -> None:
        path = os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode())
        with open(path, "wb") as handle:
            handle.write(data)
        expected.add(os.fsdecode(path))

    add("good.png", _png_bytes())
    add("thin.png", thin_png(2, 30_000_000))
    add("sliver.png", thin_png(4, 200))
    for index, name in enumerate(ODD_NAMES):
        add(name, _png_bytes(index + 2))
    os.mkfifo(folder / "fifo.jpg")
    os.symlink("/dev/zero", folder / "zero.png")
    os.symlink(folder / "nowhere.png", folder / "dangling.png")
    expected |= {str(folder / n) for n in ("fifo.jpg", "zero.png", "dangling.png")}
    _deep_folder(folder / "deep")
    long_name = str(base / ("n" * 300 + ".png"))
    missing = str(base / "missing.png")
    expected |= {long_name, missing}
    return folder, [str(folder), long_name, missing], expected


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_hostile_folder_gives_one_row_per_input_under_a_memory_cap(hostile, tmp_path):
    folder, inputs, expected = hostile
    out = tmp_path / "rows.csv"
    args = ["scan", *inputs, "--format", "csv", "--output", str(out)]
    done = run_capped(*args)
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == EXIT_PARTIAL, stderr
    assert "Traceback" not in stderr
    rows = _rows(out)
    by_path = {decode_path(row["path"]): row for row in rows}
    assert len(by_path) == len(rows)
    deep = [p for p in by_path if p.startswith(str(folder / "deep"))]
    assert len(deep) == 1 and "too long" in by_path[deep[0]]["error"]
    assert set(by_path) - set(deep) == expected
    reasons = {Path(p).name: row["error"] for p, row in by_path.items()}
    assert "aspect ratio over 50:1" in reasons["thin.png"] and "2 x 30000000" in reasons["thin.png"]
    assert "FIFO" in reasons["fifo.jpg"]
    assert "character device" in reasons["zero.png"]
    assert "not found" in reasons["dangling.png"]
    assert "too long" in by_path[inputs[1]]["error"] and "not found" in by_path[inputs[2]]["error"]
    for name in ["good.png", "sliver.png", *ODD_NAMES]:
        row = by_path[os.fsdecode(os.path.join(os.fsencode(folder), name if isinstance(name, bytes) else name.encode()))]
        assert row["error"] == "" and 0 <= float(row["score"]) <= 1, name

    again = runner.invoke(app, [*args, "--resume"])  # nothing left to decode: no need for the cap
    assert again.exit_code == EXIT_OK, again.output
    assert f"{len(rows)} of {len(rows)} inputs already there, 0 to scan" in " ".join(again.output.split())
    assert _rows(out) == rows


def test_every_name_survives_csv_jsonl_and_json(hostile, tmp_path):
    folder, _, _ = hostile
    from toy_detector import saved_toy  # registers the toy detector in this process

    toy = saved_toy(tmp_path / "toy")
    names = [os.fsdecode(os.path.join(os.fsencode(folder), n)) for n in ODD_NAMES]
    for fmt in ("csv", "jsonl", "json"):
        out = tmp_path / f"rows.{fmt}"
        result = runner.invoke(app, ["scan", *names, "--detector", str(toy), "--format", fmt, "--output", str(out)])
        assert result.exit_code == EXIT_OK, result.output
        text = out.read_text(encoding="utf-8")
        if fmt == "csv":
            paths = [row["path"] for row in _rows(out)]
        elif fmt == "jsonl":
            paths = [json.loads(line)["path"] for line in text.splitlines()]
        else:
            paths = [row["path"] for row in json.loads(text)]
        assert [decode_path(p) for p in paths] == names, fmt
        assert [os.fsencode(decode_path(p)) for p in paths] == [os.path.join(os.fsencode(folder), n) for n in ODD_NAMES]
        if fmt != "json":
            resumed = runner.invoke(app, ["scan", *names, "--detector", str(toy), "--format", fmt,
                                          "--output", str(out), "--resume"])
            assert resumed.exit_code == EXIT_OK and "0 to scan" in " ".join(resumed.output.split())
            assert written_rows(out, OutputFormat(fmt), row_columns(load_detector(toy))) == set(paths)
    table = runner.invoke(app, ["scan", *names, "--detector", str(toy)])
    assert table.exit_code == EXIT_OK, table.output
    assert "bad\\udcff\\udcfe.png" in table.stdout and "lf\\n.png" in table.stdout and "cr\\r.png" in table.stdout


def test_path_escaping_is_lossless_and_plain_names_are_untouched():
    for name in ["photo.jpg", "a\udcff\r\n.png", "a\\udcff.png", "a\\u005c", "\\", "c:\\dir\\udc.png", "x\ud800y"]:
        text = encode_path(name)
        text.encode("utf-8")
        assert decode_path(text) == name
    assert encode_path("dir/photo é.jpg") == "dir/photo é.jpg"
    assert encode_path(os.fsdecode(b"\xff.png")) == "\\udcff.png"


def test_csv_rows_quote_cr_and_lf_and_a_torn_quoted_row_is_cut(tmp_path):
    columns = ["path", "score", "label", "error"]
    rows = [{"path": "a\rb.png", "score": 0.5, "label": "real", "error": None},
            {"path": "c\nd.png", "score": None, "label": None, "error": "x"}]
    text = "".join(csv_line(dict(zip(columns, columns)), columns) for _ in [0]) + "".join(csv_line(r, columns) for r in rows)
    assert [r["path"] for r in csv.DictReader(io.StringIO(text, newline=""))] == ["a\rb.png", "c\nd.png"]
    out = tmp_path / "rows.csv"
    out.write_text(text + '"torn\nrow', encoding="utf-8", newline="")
    assert written_rows(out, OutputFormat.csv, columns) == {"a\rb.png", "c\nd.png"}
    assert out.read_bytes() == text.encode("utf-8")


def test_padded_crop_is_the_crop_of_the_padded_image():
    rng = np.random.default_rng(0)
    for width, height in [(10, 300), (300, 10), (5, 5), (300, 400), (255, 257), (1, 1)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        padded = pad_to(image, 256)
        for left, top in [(0, 0), (padded.width - 256, padded.height - 256)]:
            expected = np.asarray(padded.crop((left, top, left + 256, top + 256)))
            assert np.array_equal(np.asarray(padded_crop(image, 256, left, top)), expected)


def test_header_is_checked_before_decoding():
    with pytest.raises(ImageDecodeError, match="aspect ratio over 50:1"):
        probe_image(thin_png(2, 101))
    assert probe_image(thin_png(2, 100)) == 200
    assert decode_image(thin_png(2, 100)).size == (2, 100)
    with pytest.raises(ImageDecodeError, match="over the limit of 100 bytes"):
        decode_image(_png_bytes(), max_bytes=100)


def test_big_jpeg_is_decoded_reduced_instead_of_refused():
    buffer = io.BytesIO()
    random_photo(0, (400, 300)).save(buffer, format="JPEG")
    image = decode_image(buffer.getvalue(), max_pixels=40_000)
    assert image.size == (200, 150)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(buffer.getvalue(), max_pixels=1_000)


def test_groups_keep_decoded_pixels_under_the_budget(tmp_path, monkeypatch):
    assert plan_groups([5, 5, 5, 20, 1], budget=10, batch_size=32) == [[0, 1], [2], [3], [4]]
    assert plan_groups([1] * 5, budget=100, batch_size=2) == [[0, 1], [2, 3], [4]]
    from diffsleuth.detectors import scanning

    files = []
    for index in range(9):
        files.append(tmp_path / f"{index}.png")
        files[-1].write_bytes(_png_bytes(index, (40 + index, 30)))
    in_flight, peak = [0], [0]
    decode = scanning.decode_image

    def counting_decode(source, **kwargs):
        image = decode(source, **kwargs)
        in_flight[0] += image.width * image.height
        peak[0] = max(peak[0], in_flight[0])
        return image

    model = load_detector(saved_toy(tmp_path / "toy"))
    real_predict = model.predict

    def predict(images, batch_size=32):
        in_flight[0] = 0
        return real_predict(images, batch_size)

    monkeypatch.setattr(scanning, "decode_image", counting_decode)
    monkeypatch.setattr(model, "predict", predict)
    budget = 3 * 48 * 30
    rows = list(scan_paths(model, files, batch_size=32, limits=DecodeLimits(max_batch_pixels=budget)))
    assert [r.path for r in rows] == [str(f) for f in files] and all(r.error is None for r in rows)
    assert 0 < peak[0] <= budget


def test_unreadable_folder_is_a_row_not_an_abort(tmp_path, monkeypatch):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(_png_bytes())
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "b.png").write_bytes(_png_bytes())
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert expand_inputs([tmp_path]) == [locked, tmp_path / "ok" / "a.png"]
    with pytest.raises(ImageDecodeError, match="could not be listed .Permission denied"):
        decode_image(locked)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_file_in_unreadable_folder_is_an_error_row(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "b.png").write_bytes(_png_bytes())
    locked.chmod(0)
    try:
        result = runner.invoke(app, ["scan", str(tmp_path), str(locked / "b.png"), "--format", "json"])
    finally:
        locked.chmod(0o755)
    assert result.exit_code == EXIT_PARTIAL, result.output
    rows = json.loads(result.stdout)
    assert [r["path"] for r in rows] == [str(locked), str(locked / "b.png")] and all(r["error"] for r in rows)


def test_unwritable_output_fails_before_scoring_and_keeps_the_old_file(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    image.write_bytes(_png_bytes())
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")

    def no_scoring(*args, **kwargs):
        raise AssertionError("scored before checking the output")

    with monkeypatch.context() as patch:
        patch.setattr("diffsleuth.cli.scan.scan_paths", no_scoring)
        for fmt in ("json", "csv"):  # a table is never written into a file (refused before this check)
            result = runner.invoke(app, ["scan", str(image), "--format", fmt, "--output", str(not_a_folder / "x")])
            assert result.exit_code == EXIT_USAGE and "Traceback" not in result.output, result.output
            assert "cannot write" in " ".join(result.output.split())
        result = runner.invoke(app, ["scan", str(image), "--format", "json", "--output", str(tmp_path)])
        assert result.exit_code == EXIT_USAGE and "is a directory" in " ".join(result.output.split())
    out = tmp_path / "rows.json"
    out.write_text("old")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
        yield

    with monkeypatch.context() as patch:
        patch.setattr("diffsleuth.cli.scan.scan_paths", interrupted)
        runner.invoke(app, ["scan", str(image), "--format", "json", "--output", str(out)])
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "file", "rows.json"]
    assert runner.invoke(app, ["scan", str(image), "--format", "json", "--output", str(out)]).exit_code == EXIT_OK
    assert json.loads(out.read_text())[0]["path"] == str(image)


def test_extract_skips_and_reports_unreadable_files(tmp_path):
    import torch

    from diffsleuth.features.cache import FeatureCache
    from diffsleuth.features.extract import extract_records
    from diffsleuth.io.datasets import ImageRecord

    good = tmp_path / "good.png"
    good.write_bytes(_png_bytes())
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "dangling.png")
    (tmp_path / "text.png").write_text("not an image")
    records = [ImageRecord(tmp_path / n) for n in ("fifo.png", "good.png", "dangling.png", "text.png")]

    class MeanColour:
        def cache_config(self):
            return {"feature": "mean"}

        def extract(self, images, records):
            return {"mean": torch.stack([torch.tensor(np.asarray(i), dtype=torch.float32).mean((0, 1)) for i in images])}

    report = extract_records(MeanColour(), records, FeatureCache(tmp_path / "cache", {"feature": "mean"}))
    assert report.computed == 1
    reasons = {Path(path).name: reason for path, reason in report.failed}
    assert set(reasons) == {"fifo.png", "dangling.png", "text.png"}
    assert "FIFO" in reasons["fifo.png"] and "not found" in reasons["dangling.png"]


RAW_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_markup_in_names_is_printed_not_obeyed(tmp_path):
    from toy_detector import saved_toy_map

    toy = saved_toy_map(tmp_path / "toy")
    folder = tmp_path / "n" / "m[/]"
    folder.mkdir(parents=True)
    for name in ("[bold red]rich.png", "[bold]y[red].png"):
        (folder / name).write_bytes(_png_bytes())
    table = runner.invoke(app, ["scan", str(folder), "--detector", str(toy)])
    assert table.exit_code == EXIT_OK, table.output
    assert "[bold red]rich.png" in table.stdout and "[bold]y[red].png" in table.stdout and "m[/]" in table.stdout
    out = tmp_path / "o[/]x.csv"
    maps = tmp_path / "maps"
    maps.write_text("a file, so no overlay can be written under it")
    written = runner.invoke(app, ["scan", str(folder), "--detector", str(toy), "-o", str(out), "--maps", str(maps)])
    assert written.exit_code == EXIT_OK, written.output
    assert f"wrote 2 rows to {out}" in written.stderr
    assert f"no score map for {folder / '[bold red]rich.png'}" in written.stderr
    assert len(_rows(out)) == 2
    missing = runner.invoke(app, ["scan", str(tmp_path / "[/]typo[bold].png")])
    assert missing.exit_code == EXIT_USAGE and "[/]typo[bold].png: no file matches" in missing.stderr


def test_control_characters_are_visible_escapes_on_the_terminal_and_exact_in_files(tmp_path):
    from PIL import PngImagePlugin

    toy = saved_toy(tmp_path / "toy")
    folder = tmp_path / "in"
    folder.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Model: evil\x1b[2J\x07\x00\x9b\u202e")
    name = "esc\x1b]0;title\x07-bell\x9b-rtl\u202egnp.png"
    random_photo(3, (64, 48)).save(folder / name, pnginfo=info)
    result = runner.invoke(app, ["scan", str(folder), "--detector", str(toy)])
    assert result.exit_code == EXIT_OK, result.output
    assert not RAW_CONTROLS.search(result.stdout), repr(result.stdout)
    assert "esc\\x1b]0;title\\x07-bell\\x9b-rtl\\u202egnp.png" in result.stdout
    assert "\\x1b[2J\\x07\\x00\\x9b\\u202e" in result.stdout
    out = tmp_path / "rows.json"
    assert runner.invoke(app, ["scan", str(folder), "--detector", str(toy), "-o", str(out)]).exit_code == EXIT_OK
    (row,) = json.loads(out.read_text())
    assert decode_path(row["path"]) == str(folder / name) and "evil\x1b[2J\x07\x00\x9b\u202e" in row["provenance"]
    missing = runner.invoke(app, ["scan", str(tmp_path / "bell\x07\x1b[2J.png")])
    assert missing.exit_code == EXIT_USAGE and "bell\\x07\\x1b[2J.png" in missing.stderr
    assert not RAW_CONTROLS.search(missing.stderr.replace("\n", ""))


def test_memory_errors_while_reading_or_reducing_become_that_files_error_row(tmp_path, monkeypatch):
    from diffsleuth.detectors import registry
    from diffsleuth.io import decode

    toy = saved_toy(tmp_path / "toy")
    names = ["a.png", "huge.png", "b.png", "wide.png"]
    for seed, name in enumerate(names):
        (tmp_path / name).write_bytes(_png_bytes(seed, (96, 48) if name == "wide.png" else (64, 48)))
    real_read, real_load = decode.read_regular_file, registry.load_detector

    def read(path, max_bytes):
        if Path(path).name == "huge.png":
            raise MemoryError
        return real_read(path, max_bytes)

    def load(*args, **kwargs):
        model = real_load(*args, **kwargs)
        reduce = model.reduce_input

        def reduce_or_fail(image):
            if image.width == 96:
                raise MemoryError
            return reduce(image)

        model.reduce_input = reduce_or_fail
        return model

    monkeypatch.setattr(decode, "read_regular_file", read)
    monkeypatch.setattr(registry, "load_detector", load)
    result = runner.invoke(app, ["scan", *(str(tmp_path / n) for n in names), "--detector", str(toy),
                                 "--format", "json"])
    assert result.exit_code == EXIT_PARTIAL, result.output
    rows = {Path(row["path"]).name: row for row in json.loads(result.stdout)}
    for name in ("huge.png", "wide.png"):
        assert rows[name]["score"] is None and "not enough memory" in rows[name]["error"]
    assert rows["a.png"]["error"] is None and rows["b.png"]["error"] is None


_CAPPED_DECODE = """
import resource, sys
from diffsleuth.io.decode import ImageDecodeError, decode_image
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
cap = size + (200 << 20)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
try:
    decode_image(sys.argv[1], max_pixels=10**9)
except ImageDecodeError as exc:
    print(exc.reason)
"""


def test_a_real_memory_cap_while_decoding_gives_an_error_not_a_crash(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (12_000, 12_000)).save(big)  # 144 MB as grey, 432 MB once converted to RGB
    done = subprocess.run([sys.executable, "-c", _CAPPED_DECODE, str(big)], capture_output=True, timeout=120,
                          env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert "not enough memory" in done.stdout.decode()
