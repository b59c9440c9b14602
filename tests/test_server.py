from __future__ import annotations

import io

import pytest

from conftest import random_photo
from diffsleuth.detectors import load_detector
from toy_detector import saved_toy, saved_toy_map

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
    grid = served["score_map"]  # the default reads crops: a small image is one cell
    assert served == {**scanned, "path": "photo.png", "score_map": grid}
    assert grid is not None and all(0.0 <= v <= 1.0 for row in grid for v in row)
    assert "trace_similarity" in served


def test_scan_endpoint_refuses_too_many_files(tmp_path):
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), max_files=2))
    files = [("files", (f"{i}.png", _png(i), "image/png")) for i in range(3)]
    response = client.post("/v1/scan", files=files)
    assert response.status_code == 413 and "at most 2" in response.json()["detail"]


def test_scan_rows_carry_the_detectors_score_map_rounded(tmp_path):
    model = load_detector(saved_toy_map(tmp_path / "toy"))
    client = TestClient(create_app(model))
    files = [("files", ("a.png", _png(1), "image/png")), ("files", ("bad.png", b"nope", "image/png"))]
    good, bad = client.post("/v1/scan", files=files).json()
    assert bad["score_map"] is None and bad["error"]
    grid = good["score_map"]
    assert len(grid) == 3 and all(len(row) == 4 for row in grid)
    assert all(0.0 <= v <= 1.0 and round(v, 4) == v for row in grid for v in row)
    from diffsleuth.io import decode_image

    (expected,) = model.predict([decode_image(_png(1))])
    import numpy as np

    np.testing.assert_allclose(np.array(grid), expected.score_map, atol=6e-5)


def test_openapi_documents_the_v1_row_schema_and_allows_extra_keys(tmp_path):
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy"))))
    spec = client.get("/openapi.json").json()
    operation = spec["paths"]["/v1/scan"]["post"]
    assert "multipart/form-data" in operation["requestBody"]["content"]
    row = spec["components"]["schemas"]["ScanRow"]
    assert {"path", "score", "label", "error", "score_map"} <= set(row["required"])
    assert {"threshold", "verdict", "declared", "provenance"} <= set(row["properties"])
    assert row.get("additionalProperties") is True
    assert spec["info"]["version"]


def test_uploads_never_touch_the_disk(tmp_path, monkeypatch):
    """A 3 MB upload (Starlette would spool anything above 1 MB to a temporary file) stays in memory."""
    import tempfile

    import numpy as np
    from PIL import Image

    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, format="PNG")
    assert buffer.tell() > 2 * 1024 * 1024
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy"))))

    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was written to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    import starlette.formparsers

    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", no_disk)
    (row,) = client.post("/v1/scan", files=[("files", ("big.png", buffer.getvalue(), "image/png"))]).json()
    assert row["error"] is None and 0.0 <= row["score"] <= 1.0


def test_scan_refuses_an_oversized_file_and_a_body_that_is_not_multipart(tmp_path):
    from diffsleuth.server.limits import ServiceLimits

    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), limits=ServiceLimits(max_file_bytes=1000)))
    response = client.post("/v1/scan", files=[("files", ("huge.png", b"x" * 5000, "image/png"))])
    assert response.status_code == 413 and "huge.png" in response.json()["detail"]
    assert client.post("/v1/scan", content=b"{}", headers={"content-type": "application/json"}).status_code == 400
    capped = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), max_request_bytes=1500))
    response = capped.post("/v1/scan", files=[("files", (f"{i}.png", b"y" * 600, "image/png")) for i in range(3)])
    assert response.status_code == 413 and "1500 bytes" in response.json()["detail"]
    assert client.post("/v1/scan", data={"note": "no file"}, files=[]).status_code in (400, 422)


def test_page_is_served_with_a_strict_content_security_policy(tmp_path):
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), max_files=7))
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert 'type="file"' in page.text and 'data-max-files="7"' in page.text
    assert "<script>" not in page.text  # the only script is /static/app.js
    for asset, kind in (("app.js", "javascript"), ("app.css", "css")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert client.get("/static/index.html").status_code == 404
    assert client.get("/static/..%2Fapp.py").status_code == 404


def test_docs_lead_to_the_offline_api_section_and_redoc_is_off(tmp_path):
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy"))))
    docs = client.get("/docs", follow_redirects=False)
    assert docs.status_code == 307 and docs.headers["location"] == "/#api"
    assert client.get("/redoc").status_code == 404
    assert 'id="api"' in client.get("/").text and 'href="/openapi.json"' in client.get("/").text


def test_model_card_is_served_as_html_with_raw_html_escaped(tmp_path):
    card = tmp_path / "MODEL_CARD.md"
    card.write_text("# Toy card\n\n<script>alert(1)</script>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
                    "[bad](javascript:alert(1))\n", encoding="utf-8")
    client = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy")), model_card=card))
    response = client.get("/model-card")
    assert response.status_code == 200 and "<h1>Toy card</h1>" in response.text and "<table>" in response.text
    assert "<script>" not in response.text and "&lt;script&gt;" in response.text
    assert "javascript:" not in response.text.replace("[bad](javascript:alert(1))", "")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert 'data-has-model-card="true"' in client.get("/").text
    without = TestClient(create_app(load_detector(saved_toy(tmp_path / "toy2"))))
    assert without.get("/model-card").status_code == 404
    assert 'data-has-model-card="false"' in without.get("/").text


def test_shipped_default_model_card_renders():
    from diffsleuth.detectors.registry import resolve_detector_path
    from diffsleuth.server.pages import render_markdown

    rendered = render_markdown((resolve_detector_path(None) / "MODEL_CARD.md").read_text(encoding="utf-8"))
    assert "<h1>" in rendered and "<table>" in rendered
