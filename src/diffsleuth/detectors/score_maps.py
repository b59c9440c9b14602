"""Score-map overlays: the image with its coarse score map drawn over it, as a PNG.

``diffsleuth scan --maps DIR`` writes one per scored image. The map (rows x cols, top row first)
is stretched over the whole picture with one flat colour per cell (matplotlib ``imshow``,
nearest, half transparent) and a colour bar. For the judge's ``cover`` grid the cells are the
crops that tile the image; a detector that reads only a centre region (a ``fixed``-grid judge,
LaRE²) has its map drawn over the whole picture all the same. The colour bar is labelled with
the detector's ``score_map_label`` (LaRE²'s map is relative reconstruction error, not a
probability).

File names come from the input path, never from its bytes: the file stem reduced to
``[A-Za-z0-9._-]`` (at most 60 characters) plus the first 10 hex digits of the SHA-256 of the
full path as given, e.g. ``holiday_01-3fa2c9d81b.png``: unique per input, safe on every file
system, and the same on a re-run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from diffsleuth.progress import console

if TYPE_CHECKING:
    from diffsleuth.detectors.scanning import ScanResult

DISPLAY_MAX_SIDE = 1024  # the picture is shrunk to this for the overlay
PROBABILITY = "P(generated)"


def overlay_name(source: str) -> str:
    """The PNG name for the overlay of ``source`` (see the module docstring)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem).strip("._") or "image"
    return f"{stem[:60]}-{hashlib.sha256(source.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}.png"


def render_overlay(image: Image.Image, score_map: np.ndarray, title: str, out: Path,
                   label: str = PROBABILITY) -> Path:
    """Write ``image`` with ``score_map`` over it to ``out`` (PNG); values outside [0, 1] widen
    the colour range to the map's own. P(generated) maps go green (0) to red (1), others viridis."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    score_map = np.asarray(score_map, dtype=np.float32)
    if score_map.ndim != 2 or score_map.size == 0:
        raise ValueError(f"a score map must be a non-empty 2-D array, got shape {score_map.shape}")
    picture = image.convert("RGB")
    picture.thumbnail((DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE))
    width, height = picture.size
    low, high = float(np.nanmin(score_map)), float(np.nanmax(score_map))
    vmin, vmax = (0.0, 1.0) if low >= 0.0 and high <= 1.0 else (low, high if high > low else low + 1.0)
    figure = Figure(figsize=(6.4 * width / max(width, height) + 1.2, 6.4 * height / max(width, height) + 0.6),
                    dpi=100)
    axes = figure.add_subplot()
    axes.imshow(np.asarray(picture), extent=(0, width, height, 0))
    cmap = "RdYlGn_r" if label == PROBABILITY else "viridis"
    shown = axes.imshow(score_map, cmap=cmap, vmin=vmin, vmax=vmax, alpha=0.45, interpolation="nearest",
                        extent=(0, width, height, 0))
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.02, label=label)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    figure.savefig(tmp, format="png", bbox_inches="tight")
    tmp.replace(out)
    return out


def write_scan_overlay(directory: Path, path: str, score: float, label: str, score_map: np.ndarray,
                       max_pixels: int, map_label: str = PROBABILITY, source: bytes | None = None) -> Path:
    """Decode ``path`` again (or ``source``, the file's bytes, for a URI that a cluster read) and
    write its overlay into ``directory`` under :func:`overlay_name`."""
    from diffsleuth.io.decode import decode_image

    image = decode_image(Path(path) if source is None else source, max_pixels=max_pixels)
    rows, cols = np.asarray(score_map).shape
    title = f"{Path(path).name}: score {score:.3f} ({label}), map {rows}x{cols}"
    return render_overlay(image, score_map, title, directory / overlay_name(path), map_label)


def write_map(directory: Path, result: ScanResult, max_pixels: int, map_label: str,
              source: bytes | None = None) -> int:
    """Write one overlay for ``--maps`` (also in ``scan --ray``'s actors, whose warnings go to their
    logs, so this lives outside the CLI); 1 if written, 0 (with a warning) if it could not be.
    ``source``: the file's bytes."""
    try:
        write_scan_overlay(directory, result.path, result.score, result.label, result.score_map, max_pixels,
                           map_label, source)
        return 1
    except (OSError, ValueError) as exc:
        console.print(f"no score map for {result.path}: {exc}", style="yellow")
        return 0
