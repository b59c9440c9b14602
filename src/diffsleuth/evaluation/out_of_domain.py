"""Inputs a model card measures beside its data sets: non-photographs, and photos shipped in wheels.

The detectors here are made for camera photographs. What they do with other images (rendered
text, charts, screenshots) is out of their domain, but users will feed them such images, so the
card measures it on a small set drawn here, deterministically (seeded; the text font is the
DejaVu Sans that matplotlib bundles, so the pixels do not depend on the system's fonts).
The real photos bundled in the scikit-image and scikit-learn wheels are a further small set of
camera photos that no training set here contains.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "motorcycle_right.png", "camera.png", "coins.png", "moon.png", "hubble_deep_field.jpg",
                  "brick.png", "grass.png", "gravel.png")
WORDS = ("invoice", "total", "meeting", "report", "quarterly", "results", "the", "and", "of", "summary",
         "project", "deadline", "budget", "figure", "table", "notes", "draft", "review", "update", "team")
PALETTES = (((255, 255, 255), (20, 20, 20)), ((250, 247, 240), (40, 40, 90)), ((30, 30, 35), (220, 220, 220)),
            ((235, 242, 250), (10, 60, 120)))


def font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize()


def text_page(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A page of rendered text lines (a document scan without the scanner)."""
    background, ink = rng.choice(PALETTES)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    face_size = rng.choice((12, 16, 22, 32))
    face, y = font(face_size), rng.randint(8, 24)
    while y < size[1] - face_size:
        draw.text((rng.randint(8, 24), y), sentence(rng, rng.randint(3, 9)), font=face, fill=ink)
        y += int(face_size * 1.5)
    return image


def chart(rng: random.Random, kind: str, size: tuple[int, int]) -> Image.Image:
    """A matplotlib chart of seeded random data, rendered to PNG and decoded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.random.default_rng(rng.randint(0, 2**31))
    fig, ax = plt.subplots(figsize=(size[0] / 100, size[1] / 100), dpi=100)
    if kind == "line":
        for _ in range(3):
            ax.plot(np.cumsum(data.normal(size=50)))
    elif kind == "bar":
        ax.bar([sentence(rng, 1) for _ in range(6)], data.uniform(1, 10, 6))
    elif kind == "scatter":
        ax.scatter(data.normal(size=200), data.normal(size=200), c=data.uniform(size=200), s=12)
    else:
        ax.hist(data.normal(size=500), bins=30)
    ax.set_title(sentence(rng, 3))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def screenshot(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A flat application window: title bar, sidebar, buttons, form fields and text."""
    background, ink = rng.choice(PALETTES)
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    accent = tuple(rng.randint(40, 220) for _ in range(3))
    draw.rectangle((0, 0, size[0], 28), fill=accent)
    draw.text((10, 6), sentence(rng, 2), font=font(14), fill=(255, 255, 255))
    sidebar = rng.randint(80, 160)
    draw.rectangle((0, 28, sidebar, size[1]), fill=tuple(max(0, c - 25) for c in background))
    for i in range(8):
        draw.text((10, 40 + 26 * i), sentence(rng, 1), font=font(13), fill=ink)
    y = 44
    while y < size[1] - 40:
        kind = rng.random()
        if kind < 0.3:
            draw.rounded_rectangle((sidebar + 16, y, sidebar + 126, y + 26), 6, fill=accent)
            draw.text((sidebar + 26, y + 5), sentence(rng, 1), font=font(13), fill=(255, 255, 255))
        elif kind < 0.6:
            draw.rectangle((sidebar + 16, y, size[0] - 20, y + 26), outline=ink, width=1)
            draw.text((sidebar + 22, y + 5), sentence(rng, 2), font=font(13), fill=ink)
        else:
            draw.text((sidebar + 16, y + 4), sentence(rng, rng.randint(4, 8)), font=font(14), fill=ink)
        y += 38
    return image


def non_photos(per_kind: int = 8, seed: int = 0) -> dict[str, Image.Image]:
    """``per_kind`` rendered text pages, charts and screenshots, named ``kind:index``."""
    rng = random.Random(seed)
    sizes = ((512, 384), (640, 480), (800, 600), (1024, 768))
    images: dict[str, Image.Image] = {}
    for i in range(per_kind):
        images[f"text:{i}"] = text_page(rng, rng.choice(sizes))
        images[f"chart:{i}"] = chart(rng, ("line", "bar", "scatter", "hist")[i % 4], rng.choice(sizes))
        images[f"screenshot:{i}"] = screenshot(rng, rng.choice(sizes))
    return images


def outside_inputs(seed: int = 0, per_kind: int = 8) -> dict[str, Image.Image]:
    """What a domain check is for: :func:`non_photos`, plus ``per_kind // 2`` images of uniform
    noise (512 px) and of thumbnails (16 to 16 * per_kind // 2 px), all seeded."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images = non_photos(per_kind, seed)
    for i in range(per_kind // 2):
        images[f"noise:{i}"] = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
        images[f"thumbnail:{i}"] = Image.fromarray(rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)).resize(
            (16 * (i + 1), 16 * (i + 1)), Image.Resampling.BICUBIC)
    return images


def wheel_photos() -> dict[str, Image.Image]:
    """The camera photos bundled in the scikit-image (if installed) and scikit-learn wheels."""
    from sklearn.datasets import load_sample_images

    from diffsleuth.io.decode import decode_image

    named: dict[str, Image.Image] = {}
    try:
        import skimage.data
    except ImportError:
        skimage = None
    if skimage is not None:
        folder = Path(skimage.data.__file__).parent
        named.update({f"skimage:{n}": decode_image(folder / n) for n in SKIMAGE_PHOTOS if (folder / n).is_file()})
    sample = load_sample_images()
    for name, array in zip(sample.filenames, sample.images):
        named[f"sklearn:{Path(name).name}"] = Image.fromarray(array)
    return named
