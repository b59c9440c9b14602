"""Read a multipart upload into memory, under limits, without ever touching the disk.

FastAPI's ``UploadFile`` parameters go through Starlette's form parser, which spools every file
part into a ``SpooledTemporaryFile`` that rolls over to a file on disk above 1 MiB. Uploaded
images must never be written to disk (people check private pictures with this service), so the
scan endpoint parses the request stream itself with python-multipart's streaming parser and keeps
each part in a ``bytearray``. The limits are checked while the stream is read, so an oversized
request is refused as soon as it crosses a limit, before the rest of it is received.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncIterator

from fastapi import HTTPException
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

# The OpenAPI description of the request body the parser accepts (FastAPI cannot infer it, since
# the endpoint reads the stream itself rather than declaring ``File`` parameters).
MULTIPART_FILES_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"},
                                         "description": "One part per image, each with a filename."}},
            }
        }
    },
}


def _decode(value: bytes, charset: str) -> str:
    try:
        return value.decode(charset)
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _Collector:
    """python-multipart callbacks that gather file parts (name, bytes) and enforce the limits."""

    def __init__(self, charset: str, max_files: int, max_file_bytes: int, max_total_bytes: int | None) -> None:
        self.charset = charset
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self.files: list[tuple[str, bytearray]] = []
        self.total = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._current: bytearray | None = None

    def on_part_begin(self) -> None:
        self._disposition = b""
        self._current = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"filename" not in options:
            return  # a plain form field: ignored, its bytes are not kept
        if len(self.files) >= self.max_files:
            raise HTTPException(413, f"more than {self.max_files} files in one request; send at most {self.max_files}")
        self._current = bytearray()
        self.files.append((_decode(options[b"filename"], self.charset) or "upload", self._current))

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current is None:
            return
        self._current.extend(data[start:end])
        self.total += end - start
        if len(self._current) > self.max_file_bytes:
            raise HTTPException(413, f"{self.files[-1][0]}: larger than {self.max_file_bytes} bytes")
        if self.max_total_bytes is not None and self.total > self.max_total_bytes:
            raise HTTPException(413, f"request larger than {self.max_total_bytes} bytes of files; send fewer at once")

    def callbacks(self) -> dict:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_part_data")}


async def read_uploads(content_type: str | None, stream: AsyncIterator[bytes], *, max_files: int,
                       max_file_bytes: int, max_total_bytes: int | None = None) -> list[tuple[str, bytes]]:
    """The (filename, bytes) of every file part of a ``multipart/form-data`` body, in order, in memory.

    Raises ``HTTPException`` 413 when a limit is crossed (as soon as it is), 400 when the body is
    not multipart form data or is malformed, 422 when it has no file part.
    """
    kind, params = parse_options_header(content_type or "")
    if kind.strip().lower() != b"multipart/form-data" or b"boundary" not in params:
        raise HTTPException(400, "send the images as multipart/form-data, one 'files' part per image")
    charset = _decode(params.get(b"charset", b"utf-8"), "latin-1")
    try:
        charset = codecs.lookup(charset).name
    except LookupError:
        charset = "utf-8"
    collector = _Collector(charset, max_files, max_file_bytes, max_total_bytes)
    try:  # FormParserError: the parser's errors, a boundary over its 256-byte limit among them
        parser = MultipartParser(params[b"boundary"], collector.callbacks())
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise HTTPException(400, f"malformed multipart body: {exc}") from exc
    if not collector.files:
        raise HTTPException(422, "no file in the request: send one 'files' part per image")
    uploads = []
    for name, data in collector.files:  # one copy at a time: the peak is the request plus one file
        uploads.append((name, bytes(data)))
        data.clear()
    return uploads
