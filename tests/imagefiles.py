"""Real image files for decoder and scan tests: good, odd-but-valid, and broken ones."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import random_photo


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def write_good_files(folder: Path) -> dict[str, Path]:
    """One file per supported format and per odd-but-valid case; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = random_photo(1, (64, 48))
    files = {
        "jpeg": _save(photo, folder / "photo.jpg", quality=90),
        "png": _save(photo, folder / "photo.png"),
        "webp": _save(photo, folder / "photo.webp", lossless=True),
        "bmp": _save(photo, folder / "photo.bmp"),
        "tiff": _save(photo, folder / "photo.tiff"),
        "gif": _save(photo.convert("P"), folder / "photo.gif"),
        "grayscale": _save(photo.convert("L"), folder / "gray.png"),
        "cmyk_jpeg": _save(photo.convert("CMYK"), folder / "cmyk.jpg", quality=90),
        "rgba_png": _save(photo.convert("RGBA"), folder / "alpha.png"),
        "jpeg_named_png": _save(photo, folder / "really_a_jpeg.png", format="JPEG"),
    }
    frames = [random_photo(s, (40, 30)).convert("P") for s in (2, 3, 4)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=50, loop=0)
    files["animated_gif"] = folder / "animated.gif"
    deep = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    files["png16"] = _save(Image.fromarray(deep), folder / "deep16.png")
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    files["palette_transparent"] = _save(palette, folder / "palette_alpha.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    files["exif_rotated"] = _save(photo, folder / "rotated.jpg", quality=90, exif=exif.tobytes())
    return files


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_broken_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = random_photo(5, (64, 48))
    jpeg_bytes = io.BytesIO()
    photo.save(jpeg_bytes, format="JPEG", quality=90)
    png_bytes = io.BytesIO()
    photo.save(png_bytes, format="PNG")
    jpeg_data, png_data = jpeg_bytes.getvalue(), png_bytes.getvalue()
    flipped = bytearray(png_data)
    for offset in range(60, len(flipped) - 20, 7):
        flipped[offset] ^= 0xFF
    bomb = (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))
    rng = np.random.default_rng(0)
    contents = {
        "empty": ("empty.jpg", b""),
        "truncated_jpeg": ("truncated.jpg", jpeg_data[: len(jpeg_data) // 2]),
        "truncated_png": ("truncated.png", png_data[: len(png_data) // 2]),
        "text_as_png": ("notes.png", b"this is a text file, not an image\n" * 5),
        "bomb_png": ("bomb.png", bomb),
        "random_bytes": ("noise.webp", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
        "flipped_png": ("flipped.png", bytes(flipped)),
    }
    files = {}
    for key, (name, data) in contents.items():
        (folder / name).write_bytes(data)
        files[key] = folder / name
    return files


def thin_png(width: int = 2, height: int = 30_000_000) -> bytes:
    """A valid RGB PNG of ``width`` x ``height`` black pixels, compressed by hand in slices:
    2 x 30,000,000 is about 200 KB on disk and 180 MB decoded (PIL would need ~24 GB padded)."""
    row = b"\x00" + b"\x00" * 3 * width
    rows_per_slice = max(1, 4_000_000 // len(row))
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_slice):
        parts.append(compressor.compress(row * min(rows_per_slice, height - start)))
    parts.append(compressor.flush())
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))
