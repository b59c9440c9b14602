from __future__ import annotations

import io

import pytest

from conftest import random_photo
from diffsleuth.detectors import load_detector
from toy_detector import saved_toy

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from diffsleuth.server.app import create_app  # noqa: E402


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    random_photo(seed).save(buffer, format="PNG")
    return buffer.getvalue()


def test_scan_endpoint_scores_good_uploads_and_reports_bad_ones(tmp_path):
    model = load_detector(saved_toy(tmp_path / "toy"))
    client = TestClient(create_app(model))
    assert client.get("/health").json()["detector"] == "toy"
    files = [("files", ("a.png", _png(1), "image/png")),
             ("files", ("broken.jpg", b"\xff\xd8\xff garbage", "image/jpeg")),
             ("files", ("b.png", _png(2), "image/png"))]
    rows = client.post("/v1/scan", files=files).json()
    assert [r["path"] for r in rows] == ["a.png", "broken.jpg", "b.png"]
    assert rows[1]["error"] and rows[1]["score"] is None
    from diffsleuth.io import decode_image

    expected = model.predict([decode_image(_png(1))])[0].score
    assert rows[0]["score"] == pytest.approx(expected, abs=1e-6)
