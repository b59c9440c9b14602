"""The web page in a real browser: Playwright driving Debian's Chromium against a real uvicorn.

Skipped, with the reason, when Chromium or Playwright is missing (``make test`` and ``.ci/run``
install both). Every page runs with the network blocked: any request to a host other than
127.0.0.1 is aborted and recorded, and each test ends by asserting there was none.
"""

from __future__ import annotations

import base64
import io
import math
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import random_photo
from diffsleuth.detectors import load_detector
from toy_detector import saved_toy_map

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip install -e '.[dev]')")

from diffsleuth.server.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Generous waits: CI's two cores may be busy; each wait ends as soon as the page is ready.
sync_api.expect.set_options(timeout=60_000)
XSS_NAME = "<img src=x onerror=alert(1)>.png"


def _png(seed: int, size: tuple[int, int] = (160, 120)) -> bytes:
    buffer = io.BytesIO()
    random_photo(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def _serve(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free port of 127.0.0.1 in a thread; yield its base URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; `make test` does it as root)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def default_server(tmp_path_factory) -> Iterator[str]:
    """The shipped default detector with its model card: what `diffsleuth serve` runs."""
    from diffsleuth.detectors.registry import resolve_detector_path

    yield from _serve(create_app(load_detector(), model_card=resolve_detector_path(None) / "MODEL_CARD.md"))


@pytest.fixture(scope="module")
def map_server(tmp_path_factory) -> Iterator[str]:
    """A toy detector that returns a 3x4 score map per image."""
    yield from _serve(create_app(load_detector(saved_toy_map(tmp_path_factory.mktemp("toy-map")))))


class Page:
    """A browser page with the network blocked, every dialog and off-host request recorded."""

    def __init__(self, browser, base: str, width: int = 1280, height: int = 900) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.blocked: list[str] = []
        self.dialogs: list[str] = []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("dialog", self._dialog)
        self.page.set_default_timeout(60_000)
        self.page.goto(base + "/")

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1:", "blob:", "data:")):
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def drop(self, files: list[tuple[str, bytes, str]]) -> None:
        """Drop files on the drop zone as a person dragging them from a file manager would."""
        payload = [{"name": n, "b64": base64.b64encode(d).decode(), "type": t} for n, d, t in files]
        transfer = self.page.evaluate_handle(
            """(files) => {
                const dt = new DataTransfer();
                for (const f of files) {
                    const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                    dt.items.add(new File([bytes], f.name, {type: f.type}));
                }
                return dt;
            }""", payload)
        self.page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
        self.page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})

    def wait_for_results(self, count: int):
        results = self.page.locator('[data-testid="result"]')
        sync_api.expect(results).to_have_count(count)
        sync_api.expect(self.page.locator('[data-testid="pending"]')).to_have_count(0)
        return results

    def close(self) -> None:
        self.context.close()
        assert self.blocked == [], f"requests left 127.0.0.1: {self.blocked}"


@pytest.fixture
def open_page(browser):
    pages = []

    def _open(base: str, **viewport) -> Page:
        pages.append(Page(browser, base, **viewport))
        return pages[-1]

    yield _open
    for page in pages:
        page.close()


def test_dropped_photo_generated_image_and_corrupt_file_get_three_cards(open_page, default_server, shared_data):
    folder = shared_data / "sd14-vs-unsplash"
    photo = (folder / "real" / "real_0000.png").read_bytes()
    generated = (folder / "fake" / "fake_0000.png").read_bytes()
    ui = open_page(default_server)
    ui.drop([("photo.png", photo, "image/png"), ("generated.png", generated, "image/png"),
             ("corrupt.jpg", b"\xff\xd8\xff this is not a JPEG", "image/jpeg")])
    results = ui.wait_for_results(3)
    cards = {results.nth(i).get_attribute("data-filename"): results.nth(i) for i in range(3)}
    assert set(cards) == {"photo.png", "generated.png", "corrupt.jpg"}
    for name in ("photo.png", "generated.png"):
        score = float(cards[name].get_attribute("data-score"))
        assert 0.0 <= score <= 1.0 and cards[name].get_attribute("data-label") in {"real", "generated"}
        if score >= 0.01:  # the page shows whole percent (JavaScript rounds halves up)
            sync_api.expect(cards[name].locator(".pct")).to_have_text(f"{math.floor(score * 100 + 0.5)}%")
    error = cards["corrupt.jpg"]
    assert error.get_attribute("data-label") == "error" and error.get_attribute("data-score") is None
    sync_api.expect(error).to_contain_text("Could not score")
    sync_api.expect(ui.page.locator(".card.error")).to_have_count(1)
    sync_api.expect(ui.page.locator("#progress-text")).to_have_text("Scored 3 images.")
    sync_api.expect(ui.page.locator("#detector")).to_contain_text("Detector: judge")
    # the thumbnails are the person's own files, as blob: URLs
    assert all(src.startswith("blob:") for src in ui.page.locator(".thumb img").evaluate_all("i => i.map(x => x.src)"))
    ui.page.click("#model-card-link")
    sync_api.expect(ui.page.locator("h1")).to_contain_text("default detector")


def test_score_map_overlay_toggles_over_the_thumbnail(open_page, map_server):
    ui = open_page(map_server)
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": "a.png", "mimeType": "image/png", "buffer": _png(1)}])
    (card,) = [ui.wait_for_results(1).first]
    overlay = card.locator('[data-testid="score-map"]')
    sync_api.expect(overlay).to_be_hidden()
    toggle = card.locator("button.map-toggle")
    sync_api.expect(toggle).to_have_text("Show score map")
    toggle.click()
    sync_api.expect(overlay).to_be_visible()
    sync_api.expect(toggle).to_have_attribute("aria-pressed", "true")
    assert overlay.evaluate("c => [c.width, c.height]") == [4, 3]
    image, drawn = card.locator(".thumb img").bounding_box(), overlay.bounding_box()
    for key in ("x", "y", "width", "height"):
        assert drawn[key] == pytest.approx(image[key], abs=1.0)
    toggle.click()
    sync_api.expect(overlay).to_be_hidden()


def test_a_map_of_another_quantity_gets_its_own_legend_and_a_single_cell_map_is_not_drawn(open_page, tmp_path):
    model = load_detector(saved_toy_map(tmp_path / "toy"))
    model.score_map_label = "relative <error>"
    rows = [{"path": "one.png", "score": 0.9, "label": "generated", "error": None, "score_map": [[0.9]]},
            {"path": "two.png", "score": 0.3, "label": "real", "error": None,
             "score_map": [[0.1, 3.0], [1.5, 2.0]]}]
    base_iter = _serve(create_app(model))
    base = next(base_iter)
    try:
        ui = open_page(base)
        ui.page.route("**/v1/scan", lambda route: route.fulfill(json=rows))
        ui.page.set_input_files('input[type="file"]', files=[
            {"name": row["path"], "mimeType": "image/png", "buffer": _png(30 + i)} for i, row in enumerate(rows)])
        results = ui.wait_for_results(2)
        assert results.nth(0).locator('[data-testid="score-map"]').count() == 0
        second = results.nth(1)
        second.locator("button.map-toggle").click()
        sync_api.expect(second.locator(".map-legend")).to_have_text(
            "Map: relative <error>, from dark (lowest in this image) to yellow (highest); not a probability.")
        assert second.locator('[data-testid="score-map"]').evaluate("c => [c.width, c.height]") == [2, 2]
    finally:
        next(base_iter, None)


def test_a_file_name_that_looks_like_html_is_shown_as_text(open_page, map_server):
    ui = open_page(map_server)
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": XSS_NAME, "mimeType": "image/png", "buffer": _png(2)}])
    card = ui.wait_for_results(1).first
    assert card.get_attribute("data-filename") == XSS_NAME
    sync_api.expect(card.locator(".name")).to_have_text(XSS_NAME)
    assert ui.page.locator('img[src="x"]').count() == 0
    ui.page.wait_for_timeout(300)  # give a (wrongly) injected onerror handler time to fire
    assert ui.dialogs == []


def test_keyboard_reaches_the_chooser_with_a_visible_focus_and_pasting_an_image_scores_it(open_page, map_server):
    ui = open_page(map_server)
    # Count the chooser's openings: Chromium's own dialog is not what is under test (and headless
    # Chromium now and then drops the file-chooser event), the page's handling of the key is.
    ui.page.evaluate("""() => {
        window.chooserOpened = 0;
        const click = HTMLInputElement.prototype.click;
        HTMLInputElement.prototype.click = function () {
            if (this.type === "file" && navigator.userActivation.isActive) window.chooserOpened++;
            return click.call(this);
        };
    }""")
    for _ in range(10):
        ui.page.keyboard.press("Tab")
        if ui.page.evaluate("document.activeElement.id") == "choose":
            break
    assert ui.page.evaluate("document.activeElement.id") == "choose"
    assert ui.page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    ui.page.keyboard.press("Enter")
    assert ui.page.evaluate("window.chooserOpened") == 1
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": "chosen.png", "mimeType": "image/png", "buffer": _png(3)}])
    ui.wait_for_results(1)
    ui.page.evaluate(
        """(b64) => {
            const dt = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], "pasted.png", {type: "image/png"}));
            document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: dt}));
        }""", base64.b64encode(_png(4)).decode())
    results = ui.wait_for_results(2)
    assert results.nth(1).get_attribute("data-filename") == "pasted.png"


def test_many_files_go_in_batches_within_the_servers_file_limit(browser, tmp_path, open_page):
    base_iter = _serve(create_app(load_detector(saved_toy_map(tmp_path / "toy")), max_files=2))
    base = next(base_iter)
    try:
        ui = open_page(base)
        posts = []
        ui.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        ui.page.set_input_files('input[type="file"]', files=[
            {"name": f"{i}.png", "mimeType": "image/png", "buffer": _png(10 + i, (48, 40))} for i in range(5)])
        results = ui.wait_for_results(5)
        assert [results.nth(i).get_attribute("data-filename") for i in range(5)] == [f"{i}.png" for i in range(5)]
        assert ui.page.locator(".card.error").count() == 0 and len(posts) == 3
    finally:
        next(base_iter, None)


def test_batches_stay_within_the_servers_request_size_and_a_too_large_file_is_not_sent(browser, tmp_path, open_page):
    import numpy as np
    from PIL import Image

    def noisy_png(seed: int, side: int) -> bytes:
        buffer = io.BytesIO()
        pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        return buffer.getvalue()

    small = [noisy_png(i, 48) for i in range(5)]  # about 7 KB each
    limit = 24_000
    base_iter = _serve(create_app(load_detector(saved_toy_map(tmp_path / "toy")), max_request_bytes=limit))
    base = next(base_iter)
    try:
        ui = open_page(base)
        bodies, statuses = [], []
        ui.page.on("request", lambda r: bodies.append(len(r.post_data_buffer)) if r.method == "POST" else None)
        ui.page.on("response", lambda r: statuses.append(r.status) if r.request.method == "POST" else None)
        files = [{"name": f"{i}.png", "mimeType": "image/png", "buffer": data} for i, data in enumerate(small)]
        files.insert(2, {"name": "big.png", "mimeType": "image/png", "buffer": noisy_png(9, 120)})
        ui.page.set_input_files('input[type="file"]', files=files)
        results = ui.wait_for_results(6)
        big = ui.page.locator('[data-testid="result"][data-filename="big.png"]')
        assert big.get_attribute("data-label") == "error"
        sync_api.expect(big.locator(".reason")).to_contain_text("larger than")
        assert ui.page.locator(".card.error").count() == 1 and results.count() == 6
        assert len(bodies) >= 2 and max(bodies) <= limit and statuses == [200] * len(bodies)
    finally:
        next(base_iter, None)


def test_phone_width_has_no_horizontal_overflow(open_page, map_server):
    ui = open_page(map_server, width=375, height=812)
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": "a-rather-long-file-name-without-any-spaces-from-a-phone-camera-0001.png",
         "mimeType": "image/png", "buffer": _png(5, (1200, 300))},
        {"name": "b.png", "mimeType": "image/png", "buffer": _png(6)}])
    ui.wait_for_results(2)
    ui.page.locator('[data-testid="result"]').first.get_by_role("button", name="Show score map").click()
    widths = ui.page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 375
    for box in ui.page.locator('[data-testid="result"]').evaluate_all(
            "cards => cards.map(c => c.getBoundingClientRect().right)"):
        assert box <= 375


def test_provenance_verdict_and_evidence_are_shown_as_text(open_page, map_server):
    """Rows with the provenance keys (threshold, verdict, declared, provenance) render them."""
    rows = [{"path": "declared.png", "score": 0.2, "label": "real", "error": None, "threshold": 0.4,
             "verdict": "generated (declared)", "declared": "generated",
             "provenance": "C2PA manifest: <b>made with</b> a generator", "score_map": None,
             "detector_extra": 0.123456}]
    ui = open_page(map_server)
    ui.page.route("**/v1/scan", lambda route: route.fulfill(json=rows))
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": "declared.png", "mimeType": "image/png", "buffer": _png(7)}])
    card = ui.wait_for_results(1).first
    assert card.get_attribute("data-label") == "real" and card.get_attribute("data-score") == "0.2"
    sync_api.expect(card.locator(".verdict")).to_have_text("Verdict: generated (declared)")
    evidence = card.locator(".evidence")
    sync_api.expect(evidence.locator("dd").nth(0)).to_have_text("generated")
    sync_api.expect(evidence.locator("dd").nth(1)).to_have_text("C2PA manifest: <b>made with</b> a generator")
    assert card.locator("b").count() == 0
    sync_api.expect(card.locator(".badge")).to_have_text("real (threshold 40%)")  # the row's own threshold
    sync_api.expect(card.locator(".extras")).to_contain_text("0.1235")
    assert card.locator('[data-testid="score-map"]').count() == 0


def test_generator_settings_in_a_png_show_as_a_declared_verdict(open_page, map_server):
    """Through the real server: provenance read from the file's metadata reaches the card."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a lighthouse\nNegative prompt: blurry\n"
                  "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 160x120, Model: <b>sd-v1-5</b>")
    buffer = io.BytesIO()
    random_photo(9, (160, 120)).save(buffer, format="PNG", pnginfo=info)
    ui = open_page(map_server)
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": "with-settings.png", "mimeType": "image/png", "buffer": buffer.getvalue()}])
    card = ui.wait_for_results(1).first
    sync_api.expect(card.locator(".verdict")).to_have_text("Verdict: generated (declared)")
    sync_api.expect(card.locator(".evidence")).to_contain_text("AUTOMATIC1111")
    sync_api.expect(card.locator(".evidence")).to_contain_text("<b>sd-v1-5</b>")
    assert card.locator(".evidence b").count() == 0


def test_a_verdict_equal_to_the_label_is_not_repeated_and_no_evidence_shows_without_any(open_page, map_server):
    rows = [{"path": "plain.png", "score": 0.7, "label": "generated", "error": None, "threshold": 0.5,
             "verdict": "generated", "declared": None, "provenance": None, "score_map": None}]
    ui = open_page(map_server)
    ui.page.route("**/v1/scan", lambda route: route.fulfill(json=rows))
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": "plain.png", "mimeType": "image/png", "buffer": _png(8)}])
    card = ui.wait_for_results(1).first
    assert card.locator(".verdict").count() == 0 and card.locator(".evidence").count() == 0
    sync_api.expect(card.locator(".badge")).to_have_text("generated (threshold 50%)")


def test_a_busy_or_smaller_server_limit_is_retried(open_page, map_server):
    """503 is retried after Retry-After; a 413 on a batch resends its files one at a time."""
    seen = []

    def answer(route):
        names = route.request.post_data_buffer.count(b'filename="')
        seen.append(names)
        if len(seen) == 1:
            route.fulfill(status=503, headers={"Retry-After": "1"}, json={"detail": "busy"})
        elif names > 1:
            route.fulfill(status=413, json={"detail": "request too large"})
        else:
            route.continue_()

    ui = open_page(map_server)
    ui.page.route("**/v1/scan", answer)
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": f"{i}.png", "mimeType": "image/png", "buffer": _png(20 + i, (48, 40))} for i in range(3)])
    results = ui.wait_for_results(3)
    assert ui.page.locator(".card.error").count() == 0
    assert [results.nth(i).get_attribute("data-filename") for i in range(3)] == ["0.png", "1.png", "2.png"]
    assert seen == [3, 3, 1, 1, 1]
