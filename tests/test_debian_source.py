from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import random_photo
from diffsleuth.io import debian
from diffsleuth.io.datasets import DatasetError, load_records

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
MEMBER = "usr/share/backgrounds/lake.png"


def build_deb(tmp_path: Path) -> Path:
    """A real .deb holding one photo and one file the manifest does not list."""
    tree = tmp_path / "pkg"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: photos\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    (tree / MEMBER).parent.mkdir(parents=True)
    random_photo(1, (32, 24)).save(tree / MEMBER)
    (tree / "usr/share/backgrounds/unlisted.txt").write_text("x")
    deb = tmp_path / "photos_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(tree), str(deb)],
                   check=True, capture_output=True)
    return deb


def write_manifest(path: Path, sha: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["package", "member", "sha256", "label", "family"])
        writer.writerow(["photos", MEMBER, sha, "real", "debian-photos"])
    return path


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    deb = build_deb(tmp_path)
    calls = []

    def download(package: str, folder: Path) -> Path:
        calls.append(package)
        return Path(shutil.copy(deb, folder))

    monkeypatch.setattr(debian, "download_package", download)
    monkeypatch.setenv("DIFFSLEUTH_CACHE", str(tmp_path / "cache"))
    sha = hashlib.sha256((tmp_path / "pkg" / MEMBER).read_bytes()).hexdigest()
    return calls, sha


def test_package_manifest_fetches_verifies_and_caches(tmp_path, fake_apt):
    calls, sha = fake_apt
    manifest = write_manifest(tmp_path / "photos.csv", sha)
    (record,) = load_records(manifest)
    assert record.label == 0 and record.family == "debian-photos" and record.generator == "photos"
    assert record.path == tmp_path / "cache" / "debian" / "photos" / "usr--share--backgrounds--lake.png"
    assert [p.name for p in record.path.parent.iterdir()] == [record.path.name]
    assert load_records(manifest) == [record]
    assert calls == ["photos"]


def test_package_manifest_refuses_a_changed_file(tmp_path, fake_apt):
    manifest = write_manifest(tmp_path / "photos.csv", "0" * 64)
    with pytest.raises(DatasetError, match=r"photos\.csv:2: photos:usr/share/backgrounds/lake\.png"):
        load_records(manifest)


def test_package_manifest_names_a_missing_member(tmp_path, fake_apt):
    _, sha = fake_apt
    manifest = tmp_path / "photos.csv"
    manifest.write_text(f"package,member,sha256,label\nphotos,usr/share/nothing.png,{sha},real\n")
    with pytest.raises(DatasetError, match="has no file usr/share/nothing.png"):
        load_records(manifest)
