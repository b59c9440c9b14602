"""Reading untrusted files and folders without hanging, exhausting memory or losing a name.

* :func:`read_regular_file` reads only regular files (a FIFO, device, socket, folder, or a link
  to one, is refused before it is read), refuses a file over ``max_bytes`` from its size before
  reading, and never reads more than ``max_bytes + 1`` bytes even if the file grows meanwhile.
  Every failure is an :class:`InputError` whose reason a scan writes into the file's row.
* :func:`walk_images` lists a folder recursively; a folder that cannot be listed (no permission,
  path too long, vanished) is returned as an input of its own, so that it becomes an error row
  instead of aborting the scan or vanishing silently.
* :func:`encode_path` / :func:`decode_path` carry any file name losslessly through text rows.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import Counter
from pathlib import Path
from typing import BinaryIO

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""Largest file read by default (256 MiB): far above a camera JPEG, PNG or TIFF of 64 MP."""

_KIND = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


class InputError(OSError):
    """A path cannot be read as an image file; ``reason`` says why in words for a row."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error, without the path (the row already names it)."""
    if exc.errno == errno.ENAMETOOLONG:
        return "path or file name too long for the file system"
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return "file not found (missing, or vanished during the scan)"
    if exc.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return exc.strerror or str(exc)


def _kind(mode: int) -> str | None:
    """None for a regular file, else what the path is in words."""
    if stat.S_ISREG(mode):
        return None
    return _KIND.get(stat.S_IFMT(mode), "not a regular file")


def _refusal(path: str | os.PathLike, mode: int) -> str:
    kind = _kind(mode)
    if stat.S_ISDIR(mode):
        try:
            with os.scandir(path):
                pass
        except OSError as exc:
            return f"directory could not be listed ({os_reason(exc)})"
        return "is a directory, not a regular file"
    return f"is {kind}, not a regular file; only regular files are read"


def open_regular(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> BinaryIO:
    """Open a regular file of at most ``max_bytes`` for reading; raises :class:`InputError` otherwise.

    The path is checked with ``stat`` before it is opened (so a device is never opened), then
    opened non-blocking (so a FIFO swapped in meanwhile cannot block) and checked again.
    """
    try:
        before = os.stat(path)
    except OSError as exc:
        raise InputError(os_reason(exc)) from exc
    if _kind(before.st_mode) is not None:
        raise InputError(_refusal(path, before.st_mode))
    if before.st_size > max_bytes:
        raise InputError(f"file is {before.st_size} bytes, over the limit of {max_bytes} (--max-bytes)")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InputError(f"cannot open file ({os_reason(exc)})") from exc
    try:
        opened = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise InputError(f"cannot read file ({os_reason(exc)})") from exc
    if _kind(opened.st_mode) is not None:
        os.close(fd)
        raise InputError(_refusal(path, opened.st_mode))
    return os.fdopen(fd, "rb")


def read_regular_file(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`)."""
    with open_regular(path, max_bytes) as handle:
        try:
            return read_bounded(handle, max_bytes)
        except InputError:
            raise
        except OSError as exc:
            raise InputError(f"cannot read file ({os_reason(exc)})") from exc


def read_bounded(handle: BinaryIO, max_bytes: int, chunk: int = 1 << 20) -> bytes:
    """Read a stream to its end in chunks, refusing it as soon as it passes ``max_bytes``
    (one large ``read(max_bytes + 1)`` would allocate the whole limit up front)."""
    parts, total = [], 0
    while True:
        part = handle.read(min(chunk, max_bytes + 1 - total))
        if part is None:
            raise InputError("file gave no data (non-blocking source)")
        if not part:
            return b"".join(parts)
        parts.append(part)
        total += len(part)
        if total > max_bytes:
            raise InputError(f"file is over the limit of {max_bytes} bytes (--max-bytes)")


def walk_images(folder: Path, extensions: frozenset[str], skipped: Counter[str] | None = None) -> list[Path]:
    """Files below ``folder`` whose suffix is in ``extensions``, sorted; folders that cannot be
    listed are returned too (reading them gives the error row). Links to folders are not followed,
    so a link cycle cannot loop; links to files are listed and checked when read. The files left
    out are counted by suffix into ``skipped``, so that a caller can say what it did not read."""
    found: list[Path] = []

    def unlistable(exc: OSError) -> None:
        found.append(Path(exc.filename) if exc.filename is not None else folder)

    for root, _dirs, files in os.walk(folder, onerror=unlistable):
        for name in files:
            suffix = Path(name).suffix.lower()
            if suffix in extensions:
                found.append(Path(root, name))
            elif skipped is not None:
                skipped[suffix or "(no suffix)"] += 1
    return sorted(found)


def path_kind(path: Path) -> str:
    """``dir``, ``file`` (anything else that exists, links included) or ``missing``; never raises."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        try:
            os.lstat(path)
        except OSError as exc:
            return "missing" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else "file"
        return "file"
    return "dir" if stat.S_ISDIR(mode) else "file"


_ESCAPED = re.compile(r"\\u(d[89a-f][0-9a-f]{2}|005c)")
_NEEDS_ESCAPE = re.compile(r"\\(?=u(?:d[89a-f][0-9a-f]{2}|005c))|[\ud800-\udfff]")


def encode_path(name: str) -> str:
    """A file name as row text: valid text, every name distinct, nothing lost.

    Bytes of a name that are not UTF-8 reach Python as lone surrogates (``os.fsdecode``'s
    surrogateescape); each is written as the six characters ``\\udcXX`` (XX = the byte in hex; any
    other lone surrogate likewise as ``\\uXXXX``). A backslash that would read as such an escape
    is written ``\\u005c``. Everything else, CR and LF included, is unchanged (CSV quotes such
    fields, JSON escapes them). :func:`decode_path` inverts it.
    """
    return _NEEDS_ESCAPE.sub(lambda m: "\\u005c" if m.group() == "\\" else f"\\u{ord(m.group()):04x}", name)


def decode_path(text: str) -> str:
    """The file name a row's ``path`` stands for (``os.fsencode`` of it gives the raw bytes)."""
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 16)), text)
