"""Decode untrusted image files into RGB, safely.

Every failure becomes one typed error, :class:`ImageDecodeError`, that names the file and the
reason, so that a batch can turn it into an error row and keep scoring the other files.
Alpha channels are dropped (composited on nothing: the colour channels are kept as stored),
because generators and cameras both write RGB and transparency carries no forensic signal here.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000
"""Largest image (width x height) decoded by default: a 8000x8000 photo; raise it explicitly."""

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO")


class ImageDecodeError(ValueError):
    """A file could not be decoded as an image; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike | None, reason: str) -> None:
        self.path = str(path) if path is not None else "<memory>"
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, scaling 16-bit and float data instead of clipping."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            scale = 65535.0
        else:
            scale = float(array.max()) if array.size and array.max() > 255 else 255.0
        array = np.clip(array / max(scale, 1e-12) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA").convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def decode_image(
    source: str | os.PathLike | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Read a file path or raw bytes into an RGB image with EXIF orientation applied.

    Animated images yield their first frame. Raises :class:`ImageDecodeError` for empty,
    truncated, corrupt, non-image or over-large inputs.
    """
    label = name if name is not None else (None if isinstance(source, bytes) else source)
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.exists():
            raise ImageDecodeError(label, "file not found")
        if path.is_dir():
            raise ImageDecodeError(label, "is a directory, not an image file")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageDecodeError(label, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageDecodeError(label, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    label,
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{max_pixels} (decompression-bomb guard; raise max_pixels to allow it)",
                )
            if image.format not in SUPPORTED_FORMATS:
                raise ImageDecodeError(label, f"unsupported image format {image.format!r}")
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(label, "not a recognised image file") from exc
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(label, f"decompression-bomb guard: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        raise ImageDecodeError(label, f"corrupt or truncated image ({exc})") from exc
    if rgb.width < 1 or rgb.height < 1:
        raise ImageDecodeError(label, "image has no pixels")
    return rgb

