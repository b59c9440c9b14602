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


def test_scan_endpoint_gives_the_rows_the_cli_gives(tmp_path):
    import json

    from typer.testing import CliRunner

    from diffsleuth.cli.main import app

    image = tmp_path / "photo.png"
    image.write_bytes(_png(3))
    client = TestClient(create_app(load_detector()))
    (served,) = client.post("/v1/scan", files=[("files", ("photo.png", image.read_bytes(), "image/png"))]).json()
    (scanned,) = json.loads(CliRunner().invoke(app, ["scan", str(image), "--format", "json"]).stdout)
    assert served == {**scanned, "path": "photo.png"}
    assert "trace_similarity" in served


def test_scan_endpoint_refuses_too_many_files(tmp_path):
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), max_files=2))
    files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(3)]
    response = client.post("/v1/scan", files=files)
    assert response.status_code == 413 and "at most 2" in response.json()["detail"]
