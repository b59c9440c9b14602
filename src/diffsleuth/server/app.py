"""A small FastAPI service: upload images, get the same rows ``diffsleuth scan`` prints.

The detector is loaded once at start-up; uploads are decoded in memory with the same guards as
files (pixel limit, typed errors), so a bad upload becomes an error row, never a 500. Decoding
and inference run in a worker thread, so the event loop keeps answering (``/health``, other
uploads) while a request is being scored.
"""

from typing import Any

from fastapi import FastAPI, File, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool

from diffsleuth.detectors.base import Detector
from diffsleuth.detectors.scanning import decode_or_error, score_decoded
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS

MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MAX_FILES = 256


def create_app(detector: Detector, max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 32,
               max_files: int = MAX_FILES) -> FastAPI:
    """Build the FastAPI app around an already-loaded detector."""
    app = FastAPI(title="diffsleuth", summary="Was this image generated?")

    def score_uploads(uploads: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        decoded = [decode_or_error(data, max_pixels, name=name) for name, data in uploads]
        results = score_decoded(detector, [name for name, _ in uploads], decoded, batch_size)
        return [result.as_row() for result in results]

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "detector": detector.name, "threshold": detector.config.threshold}

    @app.post("/v1/scan")
    async def scan(files: list[UploadFile] = File(...)) -> list[dict[str, Any]]:
        if len(files) > max_files:
            raise HTTPException(413, f"{len(files)} files in one request; send at most {max_files}")
        uploads = []
        for upload in files:
            data = await upload.read(MAX_UPLOAD_BYTES + 1)
            name = upload.filename or "upload"
            if len(data) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"{name}: larger than {MAX_UPLOAD_BYTES} bytes")
            uploads.append((name, data))
        return await run_in_threadpool(score_uploads, uploads)

    return app
