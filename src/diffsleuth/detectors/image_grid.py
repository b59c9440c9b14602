"""Which regions of an image a crop-based detector reads, and the grid of scores they form.

Two policies:

- ``fixed`` (the compact judge): ``g`` x ``g`` crops of ``size`` spread evenly over the image after
  limiting its shorter side (``g = 1``: the centre crop only).
- ``cover`` (the whole image is read): the shorter side is first limited to ``max_short_side``
  (antialiased bicubic downscale). An image whose shorter side is then at most
  ``GRID_FACTOR`` x ``size`` (336 px for 224 crops: a 256-px image, say) is read as one view, the
  model's own geometry (shorter side to ``size``, centre crop). A larger one is cut into
  ``rows = ceil(H / size)`` by ``cols = ceil(W / size)`` crops of ``size`` at that scale, evenly
  spaced from edge to edge so together they cover every pixel (neighbours overlap when the side is
  not a multiple of ``size``); at most ``MAX_PER_AXIS`` per axis, beyond which the spaced crops
  leave gaps. Example: 1000 x 700 with ``max_short_side`` 448 -> 640 x 448 -> 2 rows x 3 cols.

The crops' scores form the score map (rows x cols, top row first), and the image score is the
mean of the crop logits (for the judge: the calibrated mean trace similarity).
"""

from __future__ import annotations

import math

from PIL import Image

from diffsleuth.io.preprocess import PreprocessConfig, geometry, padded_crop

GRID_FACTOR = 1.5
MAX_PER_AXIS = 8
POLICIES = ("fixed", "cover")


def limit_scale(image: Image.Image, max_short_side: int | None) -> Image.Image:
    """Downscale so the shorter side is at most ``max_short_side`` (no-op for smaller images)."""
    short = min(image.size)
    if max_short_side is None or short <= max_short_side:
        return image
    factor = max_short_side / short
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=None)


def spread(length: int, size: int, count: int) -> list[int]:
    """``count`` offsets of a ``size`` window spread evenly over ``length`` (first 0, last flush)."""
    if count == 1:
        return [(length - size) // 2]
    return [round(i * (length - size) / (count - 1)) for i in range(count)]


def grid_crops(image: Image.Image, size: int, grid: int) -> list[Image.Image]:
    """``grid`` x ``grid`` crops without resampling, spread evenly over the image (centre for 1).

    An image smaller than ``size`` is reflected to it, each crop on its own (``padded_crop``), so a
    very thin image never becomes a padded copy of itself."""
    width, height = max(image.width, size), max(image.height, size)
    xs, ys = spread(width, size, grid), spread(height, size, grid)
    return [padded_crop(image, size, x, y) for y in ys for x in xs]


def cover_views(image: Image.Image, preprocess: PreprocessConfig,
                max_short_side: int | None) -> tuple[list[Image.Image], int, int]:
    """The ``cover`` policy: (crops in row-major order, rows, cols); see the module docstring."""
    size = preprocess.size
    image = limit_scale(image, max_short_side)
    if min(image.size) <= GRID_FACTOR * size:
        return [geometry(image, preprocess)], 1, 1
    cols = min(MAX_PER_AXIS, math.ceil(image.width / size))
    rows = min(MAX_PER_AXIS, math.ceil(image.height / size))
    xs, ys = spread(image.width, size, cols), spread(image.height, size, rows)
    return [image.crop((x, y, x + size, y + size)) for y in ys for x in xs], rows, cols


def fixed_views(image: Image.Image, preprocess: PreprocessConfig, max_short_side: int | None,
                grid: int) -> tuple[list[Image.Image], int, int]:
    """The ``fixed`` policy: ``grid`` x ``grid`` native crops for ``center_crop`` models, else the
    model's whole-image geometry (one view)."""
    if preprocess.policy != "center_crop":
        return [geometry(image, preprocess)], 1, 1
    return grid_crops(limit_scale(image, max_short_side), preprocess.size, grid), grid, grid
