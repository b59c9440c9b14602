"""A small FastAPI service: upload images, get the same rows ``diffsleuth scan`` prints.

The detector is loaded once at start-up; uploads are decoded in memory with the same guards as
files (bytes, pixel and aspect-ratio limits, typed errors), so a bad upload becomes an error row,
never a 500. Uploads are read into memory, never written to disk (see ``uploads.py``), at most
``max_request_bytes`` a request; :mod:`diffsleuth.server.limits` refuses larger bodies before
reading them and admits at most ``max_uploads`` scan requests at a time (a queue, then 503), so
memory is bounded by both. Admitted requests are scored by at most ``max_concurrent`` worker
threads once their bodies have arrived, and ``/health`` runs on the event loop, so it stays fast
while scans run. ``/`` is a page for people (``pages.py``) that uses this
same API.
"""

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request

from diffsleuth import __version__
from diffsleuth.detectors.scanning import DEFAULT_MAX_BATCH_PIXELS, DecodeLimits, score_sources
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS
from diffsleuth.provenance import read_provenance
from diffsleuth.server.limits import LimitsMiddleware, ServiceLimits
from diffsleuth.server.pages import pages_router
from diffsleuth.server.schema import ScanRow, scan_row
from diffsleuth.server.uploads import MULTIPART_FILES_BODY, read_uploads

if TYPE_CHECKING:  # the torch Detector or the torch-free JudgeRuntime: the same surface
    from diffsleuth.detectors.base import Detector


def create_app(detector: "Detector", max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 32,
               max_files: int | None = None, model_card: Path | None = None,
               max_request_bytes: int | None = None, provenance: bool = True, limits: ServiceLimits | None = None,
               max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS) -> FastAPI:
    """Build the FastAPI app around an already-loaded detector (``model_card``: its MODEL_CARD.md;
    ``limits``: request sizes, concurrency and timeouts; ``max_request_bytes`` overrides theirs).

    Labels are at the detector's ``config.threshold``. ``provenance`` reads each upload's metadata
    (C2PA, generator settings, IPTC, EXIF) into the rows' ``verdict``, ``declared``,
    ``declared_by`` and ``provenance`` fields, as ``diffsleuth scan`` does.
    """
    limits = limits or ServiceLimits()
    if max_request_bytes is not None:
        limits = dataclasses.replace(limits, max_request_bytes=max_request_bytes)
    max_files = max_files if max_files is not None else limits.max_files
    decode_limits = DecodeLimits(max_pixels=max_pixels, max_bytes=limits.max_file_bytes,
                                 max_batch_pixels=max_batch_pixels)
    scoring = anyio.CapacityLimiter(limits.max_concurrent)
    # /docs and /redoc are off: FastAPI's pages load their scripts from a CDN, blank offline.
    # /docs leads to the page's API section instead, which links /openapi.json (pages.py).
    app = FastAPI(title="diffsleuth", summary="Was this image generated?", version=__version__,
                  docs_url=None, redoc_url=None)
    app.add_middleware(LimitsMiddleware, limits=limits)

    def score_uploads(uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        names, sources = [name for name, _ in uploads], [data for _, data in uploads]
        found = [read_provenance(data, max_bytes=limits.max_file_bytes) if provenance else None for data in sources]
        results = score_sources(detector, names, sources, decode_limits, batch_size, provenance=found)
        return [scan_row(result) for result in results]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Answered on the event loop: no worker thread, no queue, so it is fast while scans run."""
        return {"status": "ok", "detector": detector.name, "threshold": detector.config.threshold}

    @app.post("/v1/scan", response_model=list[ScanRow], response_model_exclude_unset=True,
              openapi_extra={"requestBody": MULTIPART_FILES_BODY})
    async def scan(request: Request) -> list[dict[str, Any]]:
        """Score the uploaded images (multipart ``files`` parts): one row per file, in order."""
        uploads = await read_uploads(request.headers.get("content-type"), request.stream(),
                                     max_files=max_files, max_file_bytes=limits.max_file_bytes,
                                     max_total_bytes=limits.max_request_bytes)
        return await anyio.to_thread.run_sync(score_uploads, uploads, limiter=scoring)

    app.include_router(pages_router(max_files=max_files, max_file_bytes=limits.max_file_bytes, model_card=model_card,
                                    max_request_bytes=limits.max_request_bytes,
                                    score_map_label=getattr(detector, "score_map_label", "P(generated)")))

    return app
