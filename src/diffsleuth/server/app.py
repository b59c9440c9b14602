"""A small FastAPI service: upload images, get the same rows ``diffsleuth scan`` prints.

The detector is loaded once at start-up; uploads are decoded in memory with the same guards as
files (pixel limit, typed errors), so a bad upload becomes an error row, never a 500.
"""

from typing import Any

from fastapi import FastAPI, File, HTTPException, UploadFile

from diffsleuth.detectors.base import Detector
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

MAX_UPLOAD_BYTES = 50 * 1024 * 1024


def create_app(detector: Detector, max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 32) -> FastAPI:
    """Build the FastAPI app around an already-loaded detector."""
    app = FastAPI(title="diffsleuth", summary="Was this image generated?")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "detector": detector.name, "threshold": detector.config.threshold}

    @app.post("/v1/scan")
    async def scan(files: list[UploadFile] = File(...)) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        images, positions = [], []
        for upload in files:
            data = await upload.read(MAX_UPLOAD_BYTES + 1)
            name = upload.filename or "upload"
            if len(data) > MAX_UPLOAD_BYTES:
                raise HTTPException(413, f"{name}: larger than {MAX_UPLOAD_BYTES} bytes")
            try:
                images.append(decode_image(data, max_pixels=max_pixels, name=name))
                positions.append(len(rows))
                rows.append({"path": name, "score": None, "label": None, "error": None})
            except ImageDecodeError as exc:
                rows.append({"path": name, "score": None, "label": None, "error": exc.reason})
        for index, prediction in zip(positions, detector.predict(images, batch_size=batch_size)):
            rows[index].update(score=round(prediction.score, 6), label=prediction.label)
        return rows

    return app
