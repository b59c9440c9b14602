"""The web page in a real browser: Playwright driving Debian's Chromium against a real uvicorn.

Skipped, with the reason, when Chromium or Playwright is missing (``make test`` and ``.ci/run``
install both). Every page runs with the network blocked: any request to a host other than
127.0.0.1 is aborted and recorded, and each test ends by asserting there was none.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from conftest import random_photo
from diffsleuth.detectors import load_detector
from provenance_files import sign_c2pa
from toy_detector import saved_toy_map

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (pip install -e '.[dev]')")

from diffsleuth.server.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Generous waits: CI's two cores may be busy; each wait ends as soon as the page is ready.
sync_api.expect.set_options(timeout=60_000)
XSS_NAME = "<img src=x onerror=alert(1)>.png"
VERDICTS = {"generated", "uncertain", "outside the detector's domain", "no trace found", "generated (declared)",
            "ai-edited (declared)", "generated (claimed)", "ai-edited (claimed)"}
RED, ORANGE, GREY = "rgb(179, 38, 30)", "rgb(180, 83, 9)", "rgb(110, 119, 129)"  # app.css's tones


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
        card = cards[name]
        score = float(card.get_attribute("data-score"))
        assert 0.0 <= score <= 1.0 and card.get_attribute("data-label") in {"real", "generated"}
        verdict = card.get_attribute("data-verdict")
        assert verdict in VERDICTS
        sync_api.expect(card.locator('[data-testid="verdict"]')).to_have_text(verdict)
        sync_api.expect(card.locator(".score")).to_contain_text("Detector score 0.")
        text = card.inner_text().lower()
        assert "%" not in text and "chance" not in text and "probability" not in text and "real" not in text
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
            "Map: relative <error>, shaded from clear (lowest in this image) to strongest (highest); not a probability.")
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


def test_the_default_page_shows_what_it_was_measured_on_within_a_phone_width(open_page, default_server):
    ui = open_page(default_server, width=375, height=812)
    table = ui.page.get_by_role("table", name="Measured on images it never trained on")
    assert table.is_visible() and "StyleGAN2 faces" in table.inner_text()
    widths = ui.page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 375


def test_the_real_default_puts_noise_and_a_text_screenshot_outside_its_domain_and_a_signed_declaration_wins(
        open_page, default_server, shared_data):
    """End to end, no stub: the shipped default's own domain check and a C2PA-signed declaration."""
    pytest.importorskip("c2pa")
    from diffsleuth.evaluation.out_of_domain import non_photos, outside_inputs

    fixtures = shared_data.parent / "fixtures" / "c2pa"
    if not (fixtures / "test-certs").is_dir():
        pytest.skip("../shared/fixtures/c2pa is not beside this checkout")
    screenshot = next(image for name, image in non_photos(4, seed=3).items() if name.startswith("screenshot"))
    noise = outside_inputs(seed=3, per_kind=2)["noise:0"]
    photo = (shared_data / "camera-originals" / "real" / "Canon_EOS_1000D.jpg").read_bytes()
    signed = sign_c2pa(fixtures, photo, "trainedAlgorithmicMedia", fmt="image/jpeg")

    def png(image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    ui = open_page(default_server)
    ui.drop([("noise.png", png(noise), "image/png"), ("screenshot.png", png(screenshot), "image/png"),
             ("declared.jpg", signed, "image/jpeg")])
    results = ui.wait_for_results(3)
    cards = {results.nth(i).get_attribute("data-filename"): results.nth(i) for i in range(3)}
    for name in ("noise.png", "screenshot.png"):
        sync_api.expect(cards[name].locator('[data-testid="verdict"]')).to_have_text("outside the detector's domain")
        assert _border(cards[name]) == GREY
    declared = cards["declared.jpg"]
    sync_api.expect(declared.locator('[data-testid="verdict"]')).to_have_text("generated (declared)")
    assert _border(declared) == RED
    sync_api.expect(declared.locator(".detector-verdict")).to_contain_text("The pixels alone:")
    sync_api.expect(declared.locator('[data-testid="provenance"] summary')).to_contain_text("signed")


def _stubbed(ui: Page, rows: list[dict]):
    """Answer /v1/scan with ``rows`` and choose one file per row; the finished cards."""
    ui.page.route("**/v1/scan", lambda route: route.fulfill(json=rows))
    ui.page.set_input_files('input[type="file"]', files=[
        {"name": row["path"], "mimeType": "image/png", "buffer": _png(40 + i)} for i, row in enumerate(rows)])
    return ui.wait_for_results(len(rows))


def _border(card) -> str:
    return card.evaluate("c => getComputedStyle(c).borderTopColor")


def test_a_declared_generation_the_pixels_miss_is_a_red_card_with_the_pixels_verdict_beside_it(open_page, map_server):
    rows = [{"path": "declared.png", "score": 0.2, "label": "real", "error": None, "threshold": 0.4,
             "verdict": "generated (declared)", "detector_verdict": "no trace found", "declared": "generated",
             "declared_by": "signed (untrusted signer)",
             "provenance": "c2pa: generated by <b>Firefly</b>, signature valid", "score_map": None,
             "detector_extra": 0.123456}]
    card = _stubbed(open_page(map_server), rows).first
    assert card.get_attribute("data-label") == "real" and card.get_attribute("data-score") == "0.2"
    sync_api.expect(card.locator('[data-testid="verdict"]')).to_have_text("generated (declared)")
    assert _border(card) == RED
    assert card.locator('[data-testid="verdict"]').evaluate("h => getComputedStyle(h).color") == RED
    sync_api.expect(card.locator(".detector-verdict")).to_have_text("The pixels alone: no trace found")
    sync_api.expect(card.locator(".score")).to_have_text("Detector score 0.20 \u00b7 threshold 0.4")
    provenance = card.locator('[data-testid="provenance"]')
    sync_api.expect(provenance.locator("summary")).to_have_text(
        "Provenance: declares generated \u00b7 signed (signer on no trust list)")
    sync_api.expect(provenance.locator("li")).to_have_text("c2pa: generated by <b>Firefly</b>, signature valid")
    assert card.locator("b").count() == 0
    sync_api.expect(card.locator(".extras")).to_contain_text("0.1235")
    assert card.locator('[data-testid="score-map"]').count() == 0


def test_each_verdict_has_its_colour_and_an_older_servers_label_is_never_a_headline(open_page, map_server):
    base = {"score": 0.3, "error": None, "threshold": 0.5, "score_map": None}
    rows = [{**base, "path": "claimed.png", "label": "real", "verdict": "generated (claimed)",
             "detector_verdict": "no trace found", "declared": "generated", "declared_by": "unsigned",
             "provenance": "generator settings of AUTOMATIC1111 in parameters"},
            {**base, "path": "noise.png", "label": "real", "verdict": "outside the detector's domain",
             "detector_verdict": "outside the detector's domain"},
            {**base, "path": "close.png", "label": "real", "verdict": "uncertain", "detector_verdict": "uncertain"},
            {**base, "path": "old.png", "label": "real", "verdict": "real"},  # a server before verdicts
            {**base, "path": "older.png", "label": "generated", "score": 0.9}]
    results = _stubbed(open_page(map_server), rows)
    headlines = [results.nth(i).locator('[data-testid="verdict"]').inner_text() for i in range(5)]
    assert headlines == ["generated (claimed)", "outside the detector's domain", "uncertain", "no trace found",
                         "generated"]
    assert [_border(results.nth(i)) for i in range(3)] == [RED, GREY, ORANGE]
    sync_api.expect(results.nth(0).locator(".detector-verdict")).to_have_text("The pixels alone: no trace found")
    sync_api.expect(results.nth(0).locator("summary")).to_have_text(
        "Provenance: declares generated \u00b7 bare claim (unsigned)")
    for i in range(1, 5):
        assert results.nth(i).locator(".detector-verdict").count() == 0
        assert results.nth(i).locator('[data-testid="provenance"]').count() == 0
    assert "real" not in " ".join(results.nth(i).inner_text() for i in range(5)).lower()


def test_a_long_c2pa_summary_is_one_line_with_details_on_demand_and_no_word_broken(open_page, map_server):
    lines = ["c2pa: generated by Adobe Firefly (trainedAlgorithmicMedia), manifest by Adobe Photoshop 25.4.0, "
             "signature valid, signer Adobe Inc. not on a trust list",
             "c2pa ingredient: Adobe_Firefly_a-lighthouse-at-dusk_0123456789abcdef0123456789abcdef.jpg",
             "xmp: trained algorithmic media (trainedAlgorithmicMedia)",
             "exif: camera Canon EOS R5 (weak: EXIF is easily copied or edited)"]
    rows = [{"path": "firefly.jpg", "score": 0.1, "label": "real", "error": None, "threshold": 0.5,
             "verdict": "generated (declared)", "detector_verdict": "no trace found", "declared": "generated",
             "declared_by": "signed (trusted)", "provenance": "; ".join(lines), "score_map": None}]
    ui = open_page(map_server, width=375, height=812)
    card = _stubbed(ui, rows).first
    provenance = card.locator('[data-testid="provenance"]')
    assert provenance.evaluate("d => d.open") is False
    sync_api.expect(provenance.locator("ul")).to_be_hidden()
    summary = provenance.locator("summary")
    assert summary.evaluate("s => s.getClientRects().length") == 1
    line_height = float(summary.evaluate("s => parseFloat(getComputedStyle(s).lineHeight)"))
    assert summary.bounding_box()["height"] < 2.5 * line_height  # a line, two at most on a phone
    summary.click()
    sync_api.expect(provenance.locator("li")).to_have_count(4)
    sync_api.expect(provenance.locator(".backing")).to_contain_text("valid C2PA signature")
    assert [provenance.locator("li").nth(i).inner_text() for i in range(4)] == lines
    # every word shorter than a long token sits on one line; only the long file name may wrap
    broken = provenance.evaluate("""d => {
        const out = [];
        const walk = document.createTreeWalker(d, NodeFilter.SHOW_TEXT);
        for (let node = walk.nextNode(); node; node = walk.nextNode()) {
            for (const m of node.data.matchAll(/\\S+/g)) {
                if (m[0].length >= 24) continue;
                const range = document.createRange();
                range.setStart(node, m.index);
                range.setEnd(node, m.index + m[0].length);
                const tops = new Set(Array.from(range.getClientRects(), (r) => Math.round(r.top)));
                if (tops.size > 1) out.push(m[0]);
            }
        }
        return out;
    }""")
    assert broken == []
    widths = ui.page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1]


def test_generator_settings_in_a_png_show_as_a_generated_verdict(open_page, map_server):
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
    sync_api.expect(card.locator('[data-testid="verdict"]')).to_have_text(re.compile(r"^generated \((declared|claimed)\)$"))
    assert _border(card) == RED
    provenance = card.locator('[data-testid="provenance"]')
    sync_api.expect(provenance.locator("summary")).to_contain_text("declares generated")
    provenance.locator("summary").click()
    sync_api.expect(provenance).to_contain_text("AUTOMATIC1111")
    sync_api.expect(provenance).to_contain_text("<b>sd-v1-5</b>")
    assert provenance.locator("b").count() == 0


def test_a_verdict_from_the_pixels_alone_is_not_repeated_and_no_provenance_shows_without_any(open_page, map_server):
    rows = [{"path": "plain.png", "score": 0.7, "label": "generated", "error": None, "threshold": 0.5,
             "verdict": "generated", "detector_verdict": "generated", "declared": None, "declared_by": None,
             "provenance": None, "score_map": None}]
    card = _stubbed(open_page(map_server), rows).first
    assert card.locator(".detector-verdict").count() == 0 and card.locator('[data-testid="provenance"]').count() == 0
    sync_api.expect(card.locator('[data-testid="verdict"]')).to_have_text("generated")
    sync_api.expect(card.locator(".score")).to_have_text("Detector score 0.70 \u00b7 threshold 0.5")


def test_the_map_colours_only_cells_at_the_threshold_and_leaves_the_picture_visible(open_page, map_server):
    """The page draws score_maps.py's scale: the same alpha per cell as the CLI's overlay."""
    import numpy as np
    from PIL import Image

    from diffsleuth.detectors.score_maps import ALPHA_MAX, overlay_rgba

    grid = [[0.1, 0.9], [0.6, 1.0]]
    rows = [{"path": "blue.png", "score": 0.8, "label": "generated", "error": None, "threshold": 0.5,
             "verdict": "generated", "detector_verdict": "generated", "score_map": grid}]
    blue = io.BytesIO()
    Image.new("RGB", (160, 120), (0, 0, 255)).save(blue, format="PNG")
    ui = open_page(map_server)
    ui.page.route("**/v1/scan", lambda route: route.fulfill(json=rows))
    ui.page.set_input_files('input[type="file"]', files=[{"name": "blue.png", "mimeType": "image/png",
                                                         "buffer": blue.getvalue()}])
    card = ui.wait_for_results(1).first
    card.locator("button.map-toggle").click()
    overlay = card.locator('[data-testid="score-map"]')
    sync_api.expect(overlay).to_be_visible()
    sync_api.expect(card.locator(".map-legend")).to_contain_text("red regions looked generated")
    drawn = overlay.evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, 2, 2).data)")
    expected = np.asarray(overlay_rgba(np.array(grid), 0.5)).reshape(-1).tolist()
    assert drawn[3::4] == pytest.approx(expected[3::4], abs=1) and drawn[3] == 0
    assert overlay.evaluate("c => getComputedStyle(c).opacity") == "1"  # the cells' alpha is the scale
    shot = Image.open(io.BytesIO(card.locator(".thumb-frame").screenshot())).convert("RGB")
    w, h = shot.size
    below = shot.getpixel((w // 4, h // 4))        # 0.1: below the threshold, untouched
    strongest = shot.getpixel((3 * w // 4, 3 * h // 4))  # 1.0: the most opaque cell
    assert below[2] > 240 and below[0] < 15
    assert strongest[0] > 100 and strongest[2] >= 255 * (1 - ALPHA_MAX) - 10  # red over, blue still seen


def test_upload_progress_moves_while_the_bytes_are_sent(open_page, map_server):
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (420, 420, 3), dtype=np.uint8)).save(buffer, "PNG")
    ui = open_page(map_server)
    cdp = ui.context.new_cdp_session(ui.page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                  "uploadThroughput": 200_000})  # bytes per second
    ui.page.evaluate("""() => {
        window.seen = [];
        const bar = document.getElementById("progress-bar");
        const text = document.getElementById("progress-text");
        new MutationObserver(() => window.seen.push([bar.value, bar.max, text.textContent]))
            .observe(document.getElementById("progress"), {subtree: true, attributes: true, childList: true,
                                                           characterData: true});
    }""")
    ui.page.set_input_files('input[type="file"]', files=[{"name": "slow.png", "mimeType": "image/png",
                                                         "buffer": buffer.getvalue()}])
    ui.wait_for_results(1)
    sync_api.expect(ui.page.locator("#progress-text")).to_have_text("Scored 1 image.")
    seen = ui.page.evaluate("window.seen")
    sending = [value for value, top, text in seen if text.startswith("Sending 1 image: ") and 0 < value < top]
    assert len(sending) >= 2 and sending == sorted(sending)
    assert seen[-1][0] == seen[-1][1] == len(buffer.getvalue())


def test_the_curl_example_names_this_server(open_page, map_server):
    ui = open_page(map_server)
    sync_api.expect(ui.page.locator("#curl-example")).to_have_text(
        f"curl -F files=@photo.jpg -F files=@other.png {map_server}/v1/scan")


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
