"""A1111 "stealth" metadata: generation settings hidden in the least significant bits of the alpha plane.

The stealth-pnginfo extension (and NovelAI's exports) write, column by column (x outer, y inner),
one bit per pixel into the alpha LSB: a 15-byte signature (``stealth_pnginfo`` for plain UTF-8,
``stealth_pngcomp`` for gzip), a 32-bit big-endian count of payload bits, then the payload. It is
the one reader that needs pixels: only a PNG whose header says it has an alpha channel and at most
:data:`MAX_STEALTH_PIXELS` pixels is decoded, only the columns that hold the bits the header
announces are read, and the payload is cut at :data:`MAX_STEALTH_BYTES`. The RGB variant
(``stealth_rgbinfo``, in the colour LSBs) is not read: looking for it means decoding every PNG.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image

from diffsleuth.io.decode import png_without_text
from diffsleuth.provenance.containers import PNG_SIGNATURE, TextBudget

SIGNATURES = {b"stealth_pnginfo": False, b"stealth_pngcomp": True}
"""Signature -> whether the payload is gzip-compressed."""
HEADER_BITS = 15 * 8 + 32
MAX_STEALTH_PIXELS = 16_000_000
"""Largest PNG decoded for its alpha plane (a 4000x4000 image: 64 MB as RGBA)."""
MAX_STEALTH_BYTES = 4 * 1024 * 1024
"""Largest payload read from the alpha bits (settings and a workflow fit in far less)."""
FIELD = "Stealth:alpha"
_ALPHA_COLOUR_TYPES = (4, 6)  # grey + alpha, RGB + alpha


def may_hold_stealth(data: bytes) -> bool:
    """From the PNG header alone: an alpha channel and few enough pixels to decode."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        return False
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    return colour in _ALPHA_COLOUR_TYPES and 0 < width * height <= MAX_STEALTH_PIXELS


def _bits(alpha: np.ndarray, start: int, count: int) -> bytes:
    """``count`` alpha LSBs from bit ``start``, column by column, packed MSB first."""
    height = alpha.shape[0]
    first, last = start // height, -(-(start + count) // height)
    column_major = np.ascontiguousarray(alpha[:, first:last].T).ravel() & 1
    offset = start - first * height
    return np.packbits(column_major[offset:offset + count]).tobytes()


def stealth_fields(data: bytes, budget: TextBudget) -> dict[str, str]:
    """``{"Stealth:alpha": text}`` when the PNG's alpha plane carries stealth metadata, else ``{}``."""
    if not may_hold_stealth(data):
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(io.BytesIO(png_without_text(data))) as image:
            if image.format != "PNG" or "A" not in image.getbands():
                return {}
            alpha = np.asarray(image.getchannel("A"))
    if alpha.ndim != 2 or alpha.size < HEADER_BITS:
        return {}
    compressed = SIGNATURES.get(_bits(alpha, 0, 15 * 8))
    if compressed is None:
        return {}
    length = struct.unpack(">I", _bits(alpha, 15 * 8, 32))[0]
    available = alpha.size - HEADER_BITS
    count = min(length, available, MAX_STEALTH_BYTES * 8) // 8 * 8
    if count < length:
        budget.cut = True
    payload = _bits(alpha, HEADER_BITS, count)
    if compressed:
        raw = budget.inflate(payload, wbits=16 + zlib.MAX_WBITS)
    else:
        raw = payload if budget.take(len(payload)) else None
    return {FIELD: raw.decode("utf-8", "replace")} if raw else {}
