"""Image degradations shared by training augmentation, robustness sweeps and format equalisation.

A degradation is written as a short spec: ``jpeg:75``, ``webp:80``, ``png``, ``blur:2``
(Gaussian sigma in pixels), ``down:0.5`` (downscale factor, bicubic), chained with ``+``
(``down:0.5+jpeg:75``). The same function applied to both classes is what keeps a comparison fair.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFilter


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode as baseline JPEG with 4:2:0 chroma subsampling, as cameras and sites do."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality), subsampling=2)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def webp(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="WEBP", quality=int(quality))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def png(image: Image.Image) -> Image.Image:
    """Lossless round trip: equalises container format without touching pixels."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def blur(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=float(sigma)))


def downscale(image: Image.Image, factor: float) -> Image.Image:
    width = max(1, round(image.width * float(factor)))
    height = max(1, round(image.height * float(factor)))
    return image.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)


_OPS: dict[str, tuple[Callable[..., Image.Image], type | None]] = {
    "jpeg": (jpeg, int),
    "webp": (webp, int),
    "png": (png, None),
    "blur": (blur, float),
    "down": (downscale, float),
}


@dataclass(frozen=True)
class Degradation:
    """A parsed, callable chain of degradations; ``str()`` gives back the spec."""

    spec: str
    steps: tuple[tuple[str, float | int | None], ...]

    def __call__(self, image: Image.Image) -> Image.Image:
        for name, arg in self.steps:
            func, _ = _OPS[name]
            image = func(image) if arg is None else func(image, arg)
        return image

    def __str__(self) -> str:
        return self.spec


def parse_degradation(spec: str) -> Degradation:
    """Parse ``jpeg:75+blur:1`` style specs; ``none`` or an empty string is the identity."""
    text = spec.strip().lower()
    if text in ("", "none", "clean"):
        return Degradation("none", ())
    steps = []
    for part in text.split("+"):
        name, _, arg = part.partition(":")
        if name not in _OPS:
            raise ValueError(f"unknown degradation {name!r} in {spec!r} (one of {sorted(_OPS)})")
        cast = _OPS[name][1]
        if cast is None:
            if arg:
                raise ValueError(f"{name!r} takes no argument in {spec!r}")
            steps.append((name, None))
        else:
            if not arg:
                raise ValueError(f"{name!r} needs an argument in {spec!r}, e.g. {name}:75")
            steps.append((name, cast(arg)))
    return Degradation(text, tuple(steps))
