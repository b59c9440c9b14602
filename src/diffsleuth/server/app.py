"""A small FastAPI service: upload images, get the same rows ``diffsleuth scan`` prints.

The detector is loaded once at start-up; uploads are decoded in memory with the same guards as
files (pixel limit, typed errors), so a bad upload becomes an error row, never a 500. Decoding
and inference run in a worker thread, so the event loop keeps answering (``/health``, other
uploads) while a request is being scored. Uploads are read into memory, never written to disk
(see ``uploads.py``). ``/`` is a page for people (``pages.py``) that uses this same API.
"""

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from diffsleuth import __version__
from diffsleuth.detectors.base import Detector
from diffsleuth.detectors.scanning import decode_or_error, score_decoded
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.provenance import read_provenance
from diffsleuth.server.pages import pages_router
from diffsleuth.server.schema import ScanRow, scan_row
from diffsleuth.server.uploads import MULTIPART_FILES_BODY, read_uploads

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_FILES = 256


def create_app(detector: Detector, max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 32,
               max_files: int = MAX_FILES, model_card: Path | None = None,
               max_request_bytes: int | None = None, provenance: bool = True) -> FastAPI:
    """Build the FastAPI app around an already-loaded detector (``model_card``: its MODEL_CARD.md;
    ``max_request_bytes``: the most file bytes one request may carry, unbounded when None).

    Labels are at the detector's ``config.threshold``. ``provenance`` reads each upload's metadata
    (C2PA, generator settings, IPTC, EXIF) into the rows' ``verdict``, ``declared`` and
    ``provenance`` fields, as ``diffsleuth scan`` does.
    """
    # /docs and /redoc are off: FastAPI's pages load their scripts from a CDN, blank offline.
    # /docs leads to the page's API section instead, which links /openapi.json (pages.py).
    app = FastAPI(title="diffsleuth", summary="Was this image generated?", version=__version__,
                  docs_url=None, redoc_url=None)

    def score_uploads(uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        decoded = [decode_or_error(data, max_pixels, name=name) for name, data in uploads]
        found = [read_provenance(data, max_bytes=MAX_UPLOAD_BYTES) if provenance else None for _, data in uploads]
        results = score_decoded(detector, [name for name, _ in uploads], decoded, batch_size, found)
        return [scan_row(result) for result in results]

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "detector": detector.name, "threshold": detector.config.threshold}

    @app.post("/v1/scan", response_model=list[ScanRow], response_model_exclude_unset=True,
              openapi_extra={"requestBody": MULTIPART_FILES_BODY})
    async def scan(request: Request) -> list[dict[str, Any]]:
        """Score the uploaded images (multipart ``files`` parts): one row per file, in order."""
        uploads = await read_uploads(request.headers.get("content-type"), request.stream(),
                                     max_files=max_files, max_file_bytes=MAX_UPLOAD_BYTES,
                                     max_total_bytes=max_request_bytes)
        return await run_in_threadpool(score_uploads, uploads)

    app.include_router(pages_router(max_files=max_files, max_file_bytes=MAX_UPLOAD_BYTES, model_card=model_card,
                                    max_request_bytes=max_request_bytes,
                                    score_map_label=getattr(detector, "score_map_label", "P(generated)")))

    return app
