"""Read a file's bytes (bounded) and the metadata fields in its container, never its pixels.

Fields come out as one flat ``name -> text`` dict: PNG text chunks under their keyword
(``parameters``, ``prompt``, ``Software``, ...), EXIF tags as ``EXIF:<name>``, the XMP packet as
``XMP`` and each XMP property as ``XMP:<name>``, a JPEG/GIF comment as ``Comment:file``. A value
that is a JSON object is also opened one level as ``<name>/<key>`` (SwarmUI, ComfyUI "Save Image
Plus" and NovelAI put JSON objects in EXIF UserComment). PNG chunks are walked here (text chunks
after the image data are common, and Pillow reads those only by decoding the image); other formats
go through ``Image.open``, which parses headers and leaves the pixels alone.

All text one file yields, decompressed or not, shares one :class:`TextBudget`: a file of 600
zTXt chunks inflating to 8 MiB each costs what 16 MiB of text costs, and says it was cut.
"""

from __future__ import annotations

import html
import io
import json
import os
import re
import struct
import warnings
import zlib

from PIL import Image

from diffsleuth.io.guards import InputError, read_regular_file

MAX_METADATA_BYTES = 16 * 1024 * 1024
"""Most text kept from one file's metadata, all chunks and tags together (a ComfyUI workflow is
typically well under 1 MB); past it the rest is not read and the result says so."""
MAX_JSON_KEYS = 200
MAX_XMP_PROPERTIES = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_TAGS = {0x010E: "ImageDescription", 0x010F: "Make", 0x0110: "Model", 0x0131: "Software", 0x013B: "Artist",
             0x9286: "UserComment"}
"""IFD0 tags read; UserComment belongs in the EXIF IFD, but ComfyUI's "Save Image Plus" writes it here."""
EXIF_SUB_TAGS = {0x9286: "UserComment"}
EXIF_IFD = 0x8769
_USER_COMMENT_CODES = {b"ASCII\0\0\0": "latin-1", b"UNICODE\0": "utf-16", b"JIS\0\0\0\0\0": "shift_jis",
                       b"\0\0\0\0\0\0\0\0": "latin-1"}
_XMP_ELEMENT = re.compile(r"<([\w.-]+:[\w.-]+)(?:\s[^<>]*)?>([^<]*)</([\w.-]+:[\w.-]+)>")
_XMP_ATTRIBUTE = re.compile(r'\s([\w.-]+:[\w.-]+)="([^"]*)"')


class ProvenanceInputError(ValueError):
    """The file cannot be read for provenance (missing, not a regular file, over the size limit)."""


class TextBudget:
    """How much metadata text one file may still yield; ``cut`` once something was left unread.

    ``unread`` lists parts that could not be parsed (a broken EXIF block): the others still count.
    """

    def __init__(self, total: int = MAX_METADATA_BYTES) -> None:
        self.left = total
        self.total = total
        self.cut = False
        self.unread: list[str] = []

    def take(self, size: int) -> bool:
        """Count ``size`` bytes of plain text; False (and ``cut``) when they do not fit."""
        if size > self.left:
            self.cut = True
            return False
        self.left -= size
        return True

    def inflate(self, payload: bytes, wbits: int = zlib.MAX_WBITS) -> bytes | None:
        """Decompress within what is left (None past it, or when the data is broken): bombs stay small."""
        if self.left <= 0:
            self.cut = True
            return None
        limit = self.left
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(payload, limit)
        except zlib.error:
            return None
        self.left -= len(out)
        if inflater.unconsumed_tail or (not inflater.eof and len(out) == limit):
            self.cut = True  # more was waiting: the whole budget is spent, the rest of the file is not read
            self.left = 0
            return None
        return out


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


def png_chunks(data: bytes, budget: TextBudget) -> tuple[dict[str, str], bytes | None]:
    """Text chunks (tEXt, zTXt, iTXt) by keyword and the raw eXIf chunk, anywhere in the file."""
    texts: dict[str, str] = {}
    exif = None
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        start = pos + 8
        pos += 12 + length
        if pos - 4 > len(data) or kind == b"IEND":
            break
        if kind not in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
            continue
        body = data[start:start + length]
        key, _, rest = body.partition(b"\0")
        name = key.decode("latin-1")
        text = None
        if kind == b"tEXt" and budget.take(len(rest)):
            text = rest.decode("latin-1")
        elif kind == b"zTXt" and rest[:1] == b"\0":
            raw = budget.inflate(rest[1:])
            text = None if raw is None else raw.decode("utf-8", "replace")
        elif kind == b"iTXt" and len(rest) >= 2:
            compressed = rest[0] == 1
            _lang, _, rest2 = rest[2:].partition(b"\0")
            _translated, _, payload = rest2.partition(b"\0")
            raw = budget.inflate(payload) if compressed else payload if budget.take(len(payload)) else None
            text = None if raw is None else raw.decode("utf-8", "replace")
        elif kind == b"eXIf":
            exif = body
        if text is not None:
            texts[name] = text
    return texts, exif


def decode_user_comment(raw: bytes | str) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (A1111 writes UTF-16).

    ``UNICODE`` text comes in either byte order, with or without a byte-order mark: piexif (A1111)
    writes big-endian, Civitai and others little-endian; the order that reads as more ASCII wins.
    """
    if isinstance(raw, str):
        return raw.strip("\0")
    code, text = raw[:8], raw[8:]
    encoding = _USER_COMMENT_CODES.get(code)
    if encoding is None:
        return raw.decode("utf-8", "replace").strip("\0")
    if encoding == "utf-16":
        if text[:2] in (b"\xfe\xff", b"\xff\xfe"):
            text_str = text.decode("utf-16", "replace")
        else:
            big = text.decode("utf-16-be", "replace")
            little = text.decode("utf-16-le", "replace")
            text_str = big if sum(c.isascii() for c in big) >= sum(c.isascii() for c in little) else little
    else:
        text_str = text.decode(encoding, "replace")
    return text_str.strip("\0")


def _tag_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = decode_user_comment(value) if value[:8] in _USER_COMMENT_CODES else value.decode("utf-8", "replace")
    return value.strip("\0 ") if isinstance(value, str) and value.strip("\0 ") else None


def exif_fields(raw: bytes, budget: TextBudget) -> dict[str, str]:
    """The EXIF tags the patterns look at, as ``EXIF:<name>`` text."""
    exif = Image.Exif()
    exif.load(raw)
    found = [(name, exif.get(tag)) for tag, name in EXIF_TAGS.items()]
    if EXIF_IFD in exif:
        sub = exif.get_ifd(EXIF_IFD)
        found += [(name, sub.get(tag)) for tag, name in EXIF_SUB_TAGS.items()]
    fields: dict[str, str] = {}
    for name, value in found:
        text = _tag_text(value)
        if text and budget.take(len(text)):
            fields[f"EXIF:{name}"] = fields.get(f"EXIF:{name}") or text
    return fields


def xmp_fields(xmp: str) -> dict[str, str]:
    """Each XMP property with a text value as ``XMP:<name>`` (a repeated name gets ``#2``, ``#3``...).

    Read with two linear regular expressions rather than an XML parser: the packet is untrusted
    (entity expansion) and only leaf text and attribute values matter here.
    """
    fields: dict[str, str] = {}
    seen: dict[str, int] = {}
    pairs = [(m.group(1), m.group(2)) for m in _XMP_ELEMENT.finditer(xmp) if m.group(1) == m.group(3)]
    pairs += _XMP_ATTRIBUTE.findall(xmp)
    for name, value in pairs[:MAX_XMP_PROPERTIES]:
        text = html.unescape(value).strip()
        if not text or name.startswith(("rdf:", "xmlns:", "x:")) and name != "rdf:li":
            continue
        seen[name] = seen.get(name, 0) + 1
        fields[f"XMP:{name}" if seen[name] == 1 else f"XMP:{name}#{seen[name]}"] = text
    return fields


def _json_object(text: str) -> dict | None:
    if not text.lstrip().startswith(("{", '"')):
        return None
    try:
        value = json.loads(text)
        if isinstance(value, str):  # some tools store a JSON object as a JSON string
            value = json.loads(value)
    except (json.JSONDecodeError, RecursionError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def open_json_objects(fields: dict[str, str], budget: TextBudget) -> dict[str, str]:
    """``<name>/<key>`` for each top-level key of a field that holds a JSON object (one level only)."""
    out: dict[str, str] = {}
    for name, text in fields.items():
        data = _json_object(text)
        for key, value in list((data or {}).items())[:MAX_JSON_KEYS]:
            try:
                value = value if isinstance(value, str) else json.dumps(value)
            except (TypeError, ValueError, RecursionError):
                continue
            if budget.take(len(value)):
                out[f"{name}/{key}"] = value
    return out


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def metadata_fields(data: bytes, budget: TextBudget | None = None) -> dict[str, str]:
    """All the metadata fields of a PNG, JPEG, WebP, TIFF or GIF file, by name (empty when none)."""
    budget = budget or TextBudget()
    fields: dict[str, str] = {}
    exif_raw = None
    if data.startswith(PNG_SIGNATURE):
        texts, exif_raw = png_chunks(data, budget)
        xmp = texts.pop("XML:com.adobe.xmp", None)
        fields.update(texts)
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
        comment = _text(info.get("comment"))
        if comment and comment.strip("\0 ") and budget.take(len(comment)):
            fields["Comment:file"] = comment.strip("\0 ")
    if xmp and budget.take(len(xmp)):
        fields["XMP"] = xmp
        fields.update(xmp_fields(xmp))
    if exif_raw and budget.take(len(exif_raw)):
        try:
            fields.update(exif_fields(exif_raw, budget))
        except Exception as exc:  # noqa: BLE001  (a broken EXIF block must not hide the text chunks)
            budget.unread.append(f"exif ({exc.__class__.__name__}: {str(exc)[:200]})")
    fields.update(open_json_objects(fields, budget))
    return fields
