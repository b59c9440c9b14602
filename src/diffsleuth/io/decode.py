"""Decode untrusted image files into RGB, safely and in bounded memory.

Every failure becomes one typed error, :class:`ImageDecodeError`, that names the file and the
reason, so that a batch can turn it into an error row and keep scoring the other files.
Alpha channels are dropped (composited on nothing: the colour channels are kept as stored),
because generators and cameras both write RGB and transparency carries no forensic signal here.

The work is decided from the header before any pixel is decoded (:func:`probe_image`): only
regular files of at most ``max_bytes`` are read (:mod:`diffsleuth.io.guards`), an image over
``max_pixels`` or with an aspect ratio over ``max_aspect``:1 is refused, and only the first frame
of an animation or multi-page file is ever decoded. A JPEG over ``max_pixels`` is decoded at 1/2,
1/4 or 1/8 scale (DCT scaling, ``Image.draft``) when that brings it under the limit.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from diffsleuth.io.formats import SUPPORTED_FORMATS
from diffsleuth.io.guards import DEFAULT_MAX_BYTES, InputError, open_regular, read_bounded, read_regular_file

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image (width x height) decoded by default: a 8000x8000 photo; raise it explicitly."""

DEFAULT_MAX_ASPECT = 50
"""Longest side over shortest side above which an image is refused (a 50:1 strip; panoramas are ~10:1)."""

_DRAFT_FORMATS = ("JPEG", "MPO")
_NO_MEMORY = "not enough memory to read and decode this image"

Source = Union[str, os.PathLike, bytes, BinaryIO]
"""A path, the bytes of a file, or an open binary file (read from its start)."""


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = str(path) if path is not None else "<memory>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling 16-bit and float data instead of clipping."""
    if image.mode.startswith("I;16"):
        # round(v / 65535 * 255) in integers: 4 bytes a pixel instead of float64's 8
        array = (np.asarray(image).astype(np.uint32) * 255 + 32767) // 65535
        image = Image.fromarray(array.astype(np.uint8), mode="L")
    elif image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        scale = float(array.max()) if array.size and array.max() > 255 else 255.0
        array = np.clip(array / max(scale, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        image = image.convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _label(source: Source, name: str | None) -> str | os.PathLike | None:
    if name is not None:
        return name
    return source if isinstance(source, (str, os.PathLike)) else None


def _check_size(label, size: int, max_bytes: int) -> None:
    """One wording for the byte-count refusals, whether the input came as bytes, a path or an open file."""
    if size > max_bytes:
        raise ImageDecodeError(label, f"file is {size} bytes, over the limit of {max_bytes} bytes")
    if not size:
        raise ImageDecodeError(label, "empty file (0 bytes)")


def _open_header(source: Source, label, max_bytes: int) -> tuple[Image.Image, BinaryIO | None]:
    """PIL's lazy image (header only) and the file to close afterwards, if one was opened."""
    if isinstance(source, bytes):
        _check_size(label, len(source), max_bytes)
        return Image.open(io.BytesIO(source)), None
    if isinstance(source, (str, os.PathLike)):
        try:
            handle = open_regular(source, max_bytes)
        except InputError as exc:
            raise ImageDecodeError(label, exc.reason) from exc
        try:
            _check_size(label, os.fstat(handle.fileno()).st_size, max_bytes)
            return Image.open(handle), handle
        except BaseException:
            handle.close()
            raise
    size = source.seek(0, os.SEEK_END)
    _check_size(label, size, max_bytes)
    source.seek(0)
    return Image.open(source), None


def _read_all(source: Source, label, max_bytes: int) -> bytes:
    try:
        if isinstance(source, bytes):
            data = source
        elif isinstance(source, (str, os.PathLike)):
            data = read_regular_file(source, max_bytes)
        else:
            source.seek(0)
            data = read_bounded(source, max_bytes)
    except InputError as exc:
        raise ImageDecodeError(label, exc.reason) from exc
    except MemoryError as exc:
        raise ImageDecodeError(label, _NO_MEMORY) from exc
    _check_size(label, len(data), max_bytes)
    return data


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
_TEXT_ERRORS = (ValueError, SyntaxError, UnidentifiedImageError)
"""How Pillow fails on a text chunk it refuses (UnidentifiedImageError when it hides a SyntaxError)."""


def png_without_text(data: bytes) -> bytes:
    """The PNG without its text chunks (``data`` itself when it has none, or is not a PNG).

    Pillow refuses a whole PNG over one text chunk it dislikes (over ``MAX_TEXT_CHUNK`` once
    inflated, an unknown compression method, too many in total): metadata trouble must never stop
    the pixel score, and no pixel needs a text chunk, so decoding retries without them.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return data
    kept, pos, keep_from = [], len(_PNG_SIGNATURE), 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if kind in _PNG_TEXT:
            kept.append(data[keep_from:pos])
            keep_from = end
        if kind == b"IEND" or end > len(data):
            break
        pos = end
    return b"".join(kept + [data[keep_from:]]) if kept else data


def _plan(image: Image.Image, label, max_pixels: int, max_aspect: float) -> tuple[int, int] | None:
    """Check the header; return the reduced size to draft to, or None to decode at full size."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageDecodeError(label, f"image is {width} x {height}: it has no pixels")
    if max(width, height) > max_aspect * min(width, height):
        raise ImageDecodeError(label, f"image is {width} x {height}: aspect ratio over {max_aspect:g}:1 "
                                      "(refused: no detector reads so thin an image)")
    if image.format not in SUPPORTED_FORMATS:
        raise ImageDecodeError(label, f"unsupported image format {image.format!r}")
    if width * height <= max_pixels:
        return None
    if image.format in _DRAFT_FORMATS:
        for scale in (2, 4, 8):
            reduced = (-(-width // scale), -(-height // scale))
            if reduced[0] * reduced[1] <= max_pixels:
                return reduced
    raise ImageDecodeError(
        label,
        f"image is {width}x{height} = {width * height} pixels, over the limit of "
        f"{max_pixels} (decompression-bomb guard; raise max_pixels to allow it)",
    )


def _guarded(label, action):
    """Run a PIL action, turning every way a hostile file makes PIL fail into ImageDecodeError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return action()
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(label, "not a recognised image file") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"decompression-bomb guard: {exc}") from exc
    except MemoryError as exc:
        raise ImageDecodeError(label, _NO_MEMORY) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise ImageDecodeError(label, f"corrupt or truncated image ({exc})") from exc


def probe_image(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    name: str | None = None,
) -> int:
    """Read only the header and return how many pixels decoding will produce.

    Raises :class:`ImageDecodeError` for everything the header already shows is refused (not a
    regular file, too many bytes, not an image, too many pixels, too thin), so a batch can be
    planned without decoding.
    """
    label = _label(source, name)

    def header() -> int:
        image, handle = _open_header(source, label, max_bytes)
        try:
            reduced = _plan(image, label, max_pixels, max_aspect)
            width, height = reduced or image.size
            return width * height
        finally:
            if handle is not None:
                handle.close()
            if isinstance(source, (bytes, str, os.PathLike)):
                image.close()  # PIL would close a caller's open file too: that one is left open

    try:
        return _guarded(label, header)
    except ImageDecodeError as exc:
        if not isinstance(exc.__cause__, _TEXT_ERRORS):
            raise
        data = _read_all(source, label, max_bytes)
        stripped = png_without_text(data)
        if stripped is data:
            raise
    return probe_image(stripped, max_pixels=max_pixels, max_bytes=max_bytes, max_aspect=max_aspect,
                       name=None if label is None else str(label))


def decode_image(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    name: str | None = None,
) -> Image.Image:
    """Read a file path, raw bytes or an open binary file into an RGB image with EXIF orientation applied.

    Animated images yield their first frame. Raises :class:`ImageDecodeError` for non-regular,
    empty, truncated, corrupt, non-image, over-large or over-thin inputs.
    """
    label = _label(source, name)
    data = _read_all(source, label, max_bytes)

    def decode(data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        reduced = _plan(image, label, max_pixels, max_aspect)
        if reduced is not None:
            image.draft("RGB", reduced)
        image.seek(0)
        image.load()
        try:
            image = ImageOps.exif_transpose(image) or image
        except (SyntaxError, ValueError, OSError, EOFError, IndexError, TypeError, struct.error):
            pass  # unreadable EXIF (a 40-byte garbage eXIf chunk): orientation unknown, pixels as stored
        return to_rgb(image)

    try:
        rgb = _guarded(label, lambda: decode(data))
    except ImageDecodeError as exc:
        stripped = png_without_text(data)
        if stripped is data or not isinstance(exc.__cause__, _TEXT_ERRORS):
            raise
        rgb = _guarded(label, lambda: decode(stripped))
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError(label, "image has no pixels")
    return rgb
