"""Turn what a Python caller has at hand into the RGB images a detector scores.

``Detector.predict`` accepts file paths, encoded bytes, PIL images and HxWx3 uint8 arrays (one,
or a list of them). Paths and bytes go through :func:`decode_image`, the same guarded decoder
``diffsleuth scan`` uses (size limit, EXIF orientation, first frame, alpha dropped), so a script
and the command line score the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image

from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, decode_image

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
"""One image: a file path, the encoded file's bytes, a PIL image, or an HxWx3 uint8 RGB array."""


def _is_single(inputs: object) -> bool:
    if isinstance(inputs, np.ndarray):
        return inputs.ndim != 4  # NxHxWx3 is a batch; anything else is one (checked below)
    return isinstance(inputs, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image))


def array_to_image(array: np.ndarray, name: str = "array") -> Image.Image:
    """An HxWx3 uint8 RGB array as a PIL image; other shapes or dtypes are refused, not guessed at."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3 or 0 in array.shape:
        raise ValueError(f"{name}: expected an HxWx3 uint8 RGB array, got shape {array.shape} and dtype "
                         f"{array.dtype} (convert with e.g. np.asarray(Image.open(f).convert('RGB')))")
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def as_rgb_image(item: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, index: int = 0) -> Image.Image:
    """One input as an RGB PIL image; undecodable paths and bytes raise ``ImageDecodeError`` naming them."""
    if isinstance(item, Image.Image):
        return item if item.mode == "RGB" else item.convert("RGB")
    if isinstance(item, np.ndarray):
        return array_to_image(item, f"input {index}")
    if isinstance(item, (bytearray, memoryview)):
        item = bytes(item)
    if isinstance(item, bytes):
        return decode_image(item, max_pixels=max_pixels, name=f"input {index} (bytes)")
    if isinstance(item, (str, os.PathLike)):
        return decode_image(item, max_pixels=max_pixels)
    raise TypeError(f"input {index}: cannot score a {type(item).__name__}; give a path, bytes, a PIL image "
                    "or an HxWx3 uint8 array")


def input_list(inputs: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One input or a sequence of them (an NxHxWx3 array is N images) as a list of inputs."""
    return [inputs] if _is_single(inputs) else list(inputs)  # type: ignore[list-item, arg-type]


def is_file_input(item: object) -> bool:
    """Whether ``item`` is a file (a path or encoded bytes), whose metadata can be read, not only pixels."""
    return isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview))


def as_rgb_images(inputs: ImageInput | Sequence[ImageInput],
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """One input or a sequence of them (an NxHxWx3 array is N images) as a list of RGB PIL images."""
    return [as_rgb_image(item, max_pixels, i) for i, item in enumerate(input_list(inputs))]
