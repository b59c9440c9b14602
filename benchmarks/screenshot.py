"""Screenshot of the web page with results, for the README (``make screenshot``).

Serves the shipped default detector on a free port of 127.0.0.1, opens the page in Debian's
Chromium (Playwright), drops a few images from ``../shared/data``, a copy of one generated image
with AUTOMATIC1111-style generator settings written into it (so the provenance evidence shows,
opened), a camera photo with a generated crop pasted into one corner (a composite: its score map
shows the region) and a corrupt file, shows the first score map, and writes a palette PNG (small
enough for the repository) of the whole page:

    .venv/bin/python benchmarks/screenshot.py                         # docs/images/web-page.png
    .venv/bin/python benchmarks/screenshot.py --width 375 --output /tmp/phone.png
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image, ImageOps, PngImagePlugin
from playwright.sync_api import expect, sync_playwright

from diffsleuth.detectors import load_detector
from diffsleuth.detectors.registry import resolve_detector_path
from diffsleuth.server.app import create_app

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
# Two photographs and two generated images of the shared development data (see their manifests).
SAMPLES = ["sd14-vs-unsplash/real/real_0004.png", "sd14-vs-unsplash/fake/fake_0003.png",
           "multigen/real/{first}", "multigen/fake/{first}"]
DECLARED = SHARED / "sd14-vs-unsplash/fake/fake_0010.png"  # shown again with generator settings added
CAMERA = SHARED / "camera-originals/real/Canon_IXUS_430.jpg"  # a composite's background...
PASTED = SHARED / "sd14-vs-unsplash/fake/fake_0003.png"  # ...and what is pasted into its top-right corner


def sample_files() -> list[Path]:
    files = []
    for pattern in SAMPLES:
        folder, _, name = pattern.rpartition("/")
        if name == "{first}":
            found = sorted(p for p in (SHARED / folder).rglob("*") if p.is_file())
            if found:
                files.append(found[0])
        elif (SHARED / pattern).is_file():
            files.append(SHARED / pattern)
    if not files:
        sys.exit(f"no sample images under {SHARED}: put the shared data beside this checkout")
    return files


def with_settings(path: Path) -> bytes:
    """``path`` re-saved as PNG with generator settings in a ``parameters`` text chunk, as
    AUTOMATIC1111 writes them (made up here: the shared files carry no such metadata)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "portrait photo of a woman\nNegative prompt: blurry\n"
                                "Steps: 50, Sampler: PLMS, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: sd-v1-4")
    buffer = io.BytesIO()
    Image.open(path).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def composite() -> bytes:
    """The camera photo at 448 x 448 with the centre 224 x 224 of a generated image pasted into its
    top-right quarter: the default detector's 2 x 2 grid then reads the pasted crop as one region."""
    picture = ImageOps.exif_transpose(Image.open(CAMERA)).convert("RGB").resize((448, 448), Image.Resampling.LANCZOS)
    pasted = Image.open(PASTED).convert("RGB")
    left, top = (pasted.width - 224) // 2, (pasted.height - 224) // 2
    picture.paste(pasted.crop((left, top, left + 224, top + 224)), (224, 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def serve() -> tuple[uvicorn.Server, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = create_app(load_detector(), model_card=resolve_detector_path(None) / "MODEL_CARD.md")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "images" / "web-page.png")
    parser.add_argument("--width", type=int, default=1100, help="viewport width in CSS pixels")
    parser.add_argument("--colors", type=int, default=128, help="palette size of the written PNG")
    args = parser.parse_args()
    chromium = shutil.which("chromium")
    if chromium is None:
        sys.exit("chromium is not installed (apt-get install chromium)")
    server, url = serve()
    files = [{"name": p.name, "mimeType": "image/png" if p.suffix == ".png" else "image/webp",
              "buffer": p.read_bytes()} for p in sample_files()]
    if DECLARED.is_file():
        files.append({"name": "with-settings.png", "mimeType": "image/png", "buffer": with_settings(DECLARED)})
    if CAMERA.is_file() and PASTED.is_file():
        files.append({"name": "composite.png", "mimeType": "image/png", "buffer": composite()})
    files.append({"name": "scan-0042.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff truncated"})
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": args.width, "height": 900})
            page.goto(url)
            page.set_input_files('input[type="file"]', files=files)
            expect(page.locator('[data-testid="result"]')).to_have_count(len(files), timeout=60_000)
            expect(page.locator("#detector")).to_contain_text("Detector")
            toggles = page.locator("button.map-toggle")
            if toggles.count():
                toggles.first.click()
            declared = page.locator('[data-filename="with-settings.png"] [data-testid="provenance"] summary')
            if declared.count():
                declared.click()
            page.evaluate("document.activeElement.blur()")
            shot = page.screenshot(full_page=True)
            browser.close()
    finally:
        server.should_exit = True
    image = Image.open(io.BytesIO(shot)).convert("RGB").quantize(colors=args.colors, dither=Image.Dither.NONE)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.output, optimize=True)
    print(f"{args.output}: {image.width}x{image.height}, {args.output.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
