"""Score-map overlays: one colour scale, drawn with Pillow for ``scan --maps`` and shared with the page.

A map (rows x cols, top row first) is stretched over the whole picture, one flat colour per cell.
For a P(generated) map only the cells at or above the detector's threshold are coloured: red,
from :data:`ALPHA_AT_THRESHOLD` at the threshold to :data:`ALPHA_MAX` at 1, so the picture always
shows through and a cell the detector did not find generated stays clear. A map of another
quantity (LaRE²'s relative reconstruction error, named by ``score_map_label``) says nothing per
cell about "generated": it is shaded on its own range, lowest clear, highest at
:data:`ALPHA_MAX`, in another colour. The page (``server/static/cards.js``) draws the same cells
from :func:`map_scale`, which ``server/pages.py`` hands it, so the CLI and the page cannot drift
apart. A one-cell map says nothing the score does not: none is drawn.

Everything here needs only Pillow and numpy (the base install); the PNG holds the overlaid
picture and a caption strip with the file name, the detector score and a legend.

File names: the file stem as the rows write it (:func:`~diffsleuth.io.guards.encode_path`: a name
that is not UTF-8 keeps its bytes as ``\\udcXX`` text) reduced to letters, digits and ``._-`` (at
most 60 characters), plus the first 10 hex digits of the SHA-256 of the row's full path, e.g.
``holiday_01-3fa2c9d81b.png``: unique per input, valid on every file system, the same on a re-run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from diffsleuth.io.guards import encode_path
from diffsleuth.progress import console

if TYPE_CHECKING:
    from diffsleuth.detectors.scanning import ScanResult

DISPLAY_MAX_SIDE = 1024  # the picture is shrunk to this for the overlay
PROBABILITY = "P(generated)"
GENERATED_RGB = (220, 38, 38)
"""The colour of a cell that looked generated (the page's red)."""
OTHER_RGB = (76, 61, 200)
"""The colour of a map that is not P(generated), shaded on its own range."""
ALPHA_AT_THRESHOLD = 0.3
ALPHA_MAX = 0.6
"""Opacity at the threshold and at the top of the scale: at most 60%, the picture stays visible."""
CAPTION_BACKGROUND = (255, 255, 255)
CAPTION_INK = (27, 31, 36)
LEGEND_BACKGROUND = (200, 200, 200)  # what the legend's bar is drawn over, like a mid-grey picture


def map_scale() -> dict[str, Any]:
    """The colour scale as JSON-ready data: what the page draws its overlay with."""
    return {"generated_rgb": list(GENERATED_RGB), "other_rgb": list(OTHER_RGB),
            "alpha_at_threshold": ALPHA_AT_THRESHOLD, "alpha_max": ALPHA_MAX, "probability_label": PROBABILITY}


def drawable(score_map: Any) -> bool:
    """Whether a map is worth drawing: a 2-D grid of more than one cell."""
    if score_map is None:
        return False
    grid = np.asarray(score_map)
    return grid.ndim == 2 and grid.size > 1


def cell_alpha(score_map: np.ndarray, threshold: float | None, probability: bool = True) -> np.ndarray:
    """Opacity in [0, ALPHA_MAX] of each cell. P(generated): 0 below ``threshold`` (0.5 when None),
    rising from ALPHA_AT_THRESHOLD at it to ALPHA_MAX at 1. Another quantity: 0 to ALPHA_MAX on the
    map's own range. Non-finite cells are clear."""
    values = np.asarray(score_map, dtype=np.float64)
    finite = np.isfinite(values)
    if probability:
        t = 0.5 if threshold is None else float(threshold)
        rise = np.clip((values - t) / (1.0 - t), 0.0, 1.0) if t < 1.0 else np.ones_like(values)
        alpha = np.where(values >= t, ALPHA_AT_THRESHOLD + (ALPHA_MAX - ALPHA_AT_THRESHOLD) * rise, 0.0)
    else:
        low = float(values[finite].min()) if finite.any() else 0.0
        span = (float(values[finite].max()) - low) if finite.any() else 0.0
        alpha = ALPHA_MAX * np.clip((values - low) / (span or 1.0), 0.0, 1.0)
    return np.where(finite, alpha, 0.0)


def overlay_rgba(score_map: np.ndarray, threshold: float | None, label: str = PROBABILITY) -> Image.Image:
    """The map as an RGBA image of rows x cols pixels, one per cell, in the shared colour scale."""
    grid = np.asarray(score_map, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"a score map must be a non-empty 2-D array, got shape {grid.shape}")
    probability = label == PROBABILITY
    rgba = np.zeros(grid.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = GENERATED_RGB if probability else OTHER_RGB
    rgba[..., 3] = np.round(cell_alpha(grid, threshold, probability) * 255).astype(np.uint8)
    return Image.fromarray(rgba, mode="RGBA")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: Any, width: int | None = None) -> None:
    """Draw ``text``, cut to ``width`` pixels; a font that cannot encode it (Pillow's bitmap font)
    gets it escaped."""
    if width is not None:
        try:
            while len(text) > 4 and draw.textlength(text, font=font) > width:
                text = text[:-max(4, len(text) // 10)] + "..."
        except (UnicodeError, ValueError):
            pass
    try:
        draw.text(xy, text, fill=CAPTION_INK, font=font)
    except (UnicodeError, ValueError):
        draw.text(xy, text.encode("ascii", "backslashreplace").decode("ascii"), fill=CAPTION_INK, font=font)


def _legend(width: int, threshold: float | None, label: str) -> Image.Image:
    """A bar of the scale over mid-grey: what each value looks like over a picture."""
    probability = label == PROBABILITY
    values = np.linspace(0.0, 1.0, width)[None, :]
    bar = Image.new("RGBA", (width, 1), LEGEND_BACKGROUND + (255,))
    scale = overlay_rgba(values, threshold, PROBABILITY if probability else label)
    return Image.alpha_composite(bar, scale).convert("RGB")


def render_overlay(image: Image.Image, score_map: np.ndarray, title: str, out: Path,
                   label: str = PROBABILITY, threshold: float | None = None) -> Path:
    """Write ``image`` with ``score_map`` over it (see the module docstring) and a caption to ``out``."""
    cells = overlay_rgba(score_map, threshold, label)
    picture = image.convert("RGB")
    picture.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    width, height = picture.size
    shown = Image.alpha_composite(picture.convert("RGBA"), cells.resize((width, height), Image.Resampling.NEAREST))

    font = _font(14)
    line = 20
    canvas_width = max(width, 480)
    legend_width = min(canvas_width - 20, 300)
    canvas = Image.new("RGB", (canvas_width, height + 4 * line + 24), CAPTION_BACKGROUND)
    canvas.paste(shown.convert("RGB"), ((canvas_width - width) // 2, 0))
    draw = ImageDraw.Draw(canvas)
    top = height + 6
    _text(draw, (10, top), title, font, canvas_width - 20)
    if label == PROBABILITY:
        t = 0.5 if threshold is None else threshold
        key = f"red: looked generated (at or above the threshold, {t:.3g}); clear: below it"
    else:
        key = f"{label}: clear at its lowest here, strongest at its highest"
    _text(draw, (10, top + line), key, font, canvas_width - 20)
    bar_top = top + 2 * line + 2
    canvas.paste(_legend(legend_width, threshold, label).resize((legend_width, 10)), (10, bar_top))
    ends = ("0", "1") if label == PROBABILITY else ("lowest", "highest")
    _text(draw, (10, bar_top + 12), ends[0], font)
    _text(draw, (10 + legend_width - int(draw.textlength(ends[1], font=font)), bar_top + 12), ends[1], font)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        canvas.save(tmp, format="PNG")
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def overlay_name(source: str) -> str:
    """The PNG name for the overlay of the row path ``source`` (see the module docstring)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem).strip("._") or "image"
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{stem[:60]}-{digest}.png"


def write_scan_overlay(directory: Path, path: str, score: float, label: str, score_map: np.ndarray,
                       max_pixels: int, map_label: str = PROBABILITY, source: bytes | None = None,
                       threshold: float | None = None) -> Path:
    """Decode ``path`` again (or ``source``, the file's bytes, for a URI that a cluster read) and
    write its overlay into ``directory`` under :func:`overlay_name` of its row path."""
    from diffsleuth.io.decode import decode_image

    image = decode_image(Path(path) if source is None else source, max_pixels=max_pixels)
    rows, cols = np.asarray(score_map).shape
    name = encode_path(path)
    title = f"{Path(name).name}: detector score {score:.3f} ({label}), map {rows}x{cols}"
    return render_overlay(image, score_map, title, directory / overlay_name(name), map_label, threshold)


def write_map(directory: Path, result: ScanResult, max_pixels: int, map_label: str,
              source: bytes | None = None) -> int:
    """Write one overlay for ``--maps`` (also in ``scan --ray``'s actors, whose warnings go to their
    logs, so this lives outside the CLI); 1 if written, 0 if the map has one cell or (with a
    warning) could not be drawn: a map never stops a scan. ``source``: the file's bytes."""
    if not drawable(result.score_map):
        return 0
    try:
        write_scan_overlay(directory, result.path, result.score, result.label, result.score_map, max_pixels,
                           map_label, source, result.threshold)
        return 1
    except Exception as exc:  # noqa: BLE001 - whatever went wrong, the row is kept and the scan goes on
        console.print(f"no score map for {encode_path(result.path)}: {exc}", style="yellow")
        return 0
