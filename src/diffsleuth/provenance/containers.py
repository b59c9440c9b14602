"""Read a file's bytes (bounded) and the metadata fields in its container, never its pixels.

Fields come out as one flat ``name -> text`` dict: PNG text chunks under their keyword
(``parameters``, ``prompt``, ``Software``, ...), EXIF tags as ``EXIF:<name>``, the XMP packet as
``XMP`` and a JPEG/GIF comment as ``Comment:file``. PNG chunks are walked here (text chunks after
the image data are common, and Pillow reads those only by decoding the image); other formats
go through ``Image.open``, which parses headers and leaves the pixels alone.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib

from PIL import Image

from diffsleuth.io.guards import InputError, read_regular_file
MAX_TEXT_BYTES = 8 * 1024 * 1024
"""Largest decompressed text chunk kept (a ComfyUI workflow is typically well under 1 MB)."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x013B: "Artist"}
EXIF_SUB_TAGS = {0x9286: "UserComment"}
EXIF_IFD = 0x8769
_USER_COMMENT_CODES = {b"ASCII\0\0\0": "latin-1", b"UNICODE\0": "utf-16", b"JIS\0\0\0\0\0": "shift_jis",
                       b"\0\0\0\0\0\0\0\0": "latin-1"}


class ProvenanceInputError(ValueError):
    """The file cannot be read for provenance (missing, not a regular file, over the size limit)."""


def read_bounded(source: str | os.PathLike | bytes, max_bytes: int) -> bytes:
    """The file's bytes, refusing anything but a regular file of at most ``max_bytes``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise ProvenanceInputError(f"{len(data)} bytes, over the limit of {max_bytes}")
        return data
    try:  # the scan's guarded read: regular files only, never opened blocking, read in bounded chunks
        return read_regular_file(source, max_bytes)
    except InputError as exc:
        raise ProvenanceInputError(f"cannot read file ({exc.reason})") from exc


def _inflate(data: bytes) -> str | None:
    """Decompress a zTXt/iTXt payload, giving up (None) past MAX_TEXT_BYTES: a zip bomb stays small."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error:
        return None
    return None if inflater.unconsumed_tail else out.decode("utf-8", "replace")


def png_chunks(data: bytes) -> tuple[dict[str, str], bytes | None]:
    """Text chunks (tEXt, zTXt, iTXt) by keyword and the raw eXIf chunk, anywhere in the file."""
    texts: dict[str, str] = {}
    exif = None
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if len(body) < length or kind == b"IEND":
            break
        key, _, rest = body.partition(b"\0")
        name = key.decode("latin-1")
        if len(rest) > MAX_TEXT_BYTES:
            continue
        if kind == b"tEXt":
            texts[name] = rest.decode("latin-1")
        elif kind == b"zTXt" and rest[:1] == b"\0":
            text = _inflate(rest[1:])
            if text is not None:
                texts[name] = text
        elif kind == b"iTXt" and len(rest) >= 2:
            compressed = rest[0] == 1
            _lang, _, rest2 = rest[2:].partition(b"\0")
            _translated, _, payload = rest2.partition(b"\0")
            text = _inflate(payload) if compressed else payload.decode("utf-8", "replace")
            if text is not None:
                texts[name] = text
        elif kind == b"eXIf":
            exif = body
    return texts, exif


def decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (A1111 writes UTF-16)."""
    if isinstance(raw, str):
        return raw
    code, text = raw[:8], raw[8:]
    encoding = _USER_COMMENT_CODES.get(code)
    if encoding is None:
        return raw.decode("utf-8", "replace").strip("\0")
    if encoding == "utf-16":
        # piexif (A1111) writes big-endian without a byte-order mark; some tools write little-endian.
        big = text.decode("utf-16-be", "replace")
        little = text.decode("utf-16-le", "replace")
        text_str = big if sum(c.isascii() for c in big) >= sum(c.isascii() for c in little) else little
    else:
        text_str = text.decode(encoding, "replace")
    return text_str.strip("\0")


def exif_fields(raw: bytes) -> dict[str, str]:
    """The EXIF tags the patterns look at, as ``EXIF:<name>`` text."""
    exif = Image.Exif()
    exif.load(raw)
    fields = {}
    for tag, name in EXIF_TAGS.items():
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and value.strip("\0 "):
            fields[f"EXIF:{name}"] = value.strip("\0 ")
    if EXIF_IFD in exif:
        sub = exif.get_ifd(EXIF_IFD)
        for tag, name in EXIF_SUB_TAGS.items():
            if tag in sub and isinstance(sub[tag], (bytes, str)):
                text = decode_user_comment(sub[tag][:MAX_TEXT_BYTES]).strip()
                if text:
                    fields[f"EXIF:{name}"] = text
    return fields


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def metadata_fields(data: bytes) -> dict[str, str]:
    """All the metadata fields of a PNG, JPEG, WebP, TIFF or GIF file, by name (empty when none)."""
    fields: dict[str, str] = {}
    exif_raw = None
    if data.startswith(PNG_SIGNATURE):
        texts, exif_raw = png_chunks(data)
        xmp = texts.pop("XML:com.adobe.xmp", None)
        fields.update(texts)
        if xmp:
            fields["XMP"] = xmp
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                image = Image.open(io.BytesIO(data))
            except (Image.DecompressionBombError, OSError, SyntaxError, ValueError):
                return fields  # not an image Pillow can open: nothing to read here
            with image:
                info = dict(image.info)
                tiff_xmp = getattr(image, "tag_v2", {}).get(700) if image.format == "TIFF" else None
                if image.format == "TIFF":
                    exif_raw = image.getexif().tobytes()
        exif_raw = exif_raw or info.get("exif")
        xmp = _text(info.get("xmp")) or _text(tiff_xmp)
        if xmp:
            fields["XMP"] = xmp
        comment = _text(info.get("comment"))
        if comment and comment.strip("\0 "):
            fields["Comment:file"] = comment.strip("\0 ")
    if exif_raw:
        fields.update(exif_fields(exif_raw))
    return fields
