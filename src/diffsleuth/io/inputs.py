"""Turn what a Python caller has at hand into the RGB images a detector scores.

``Detector.predict`` accepts file paths, encoded bytes, PIL images and HxWx3 uint8 arrays (one,
or a list of them). Paths and bytes go through :func:`decode_image`, the same guarded decoder
``diffsleuth scan`` uses (size limit, EXIF orientation, first frame, alpha dropped), and PIL
images go through its mode conversion (16-bit and float data scaled, not clipped), so a script
and the command line score the same pixels. Inputs of the wrong kind, and URLs, are refused
before any work (:func:`check_inputs`): they are the caller's mistake, not a bad file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Union

import numpy as np
from PIL import Image

from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from diffsleuth.io.decode import to_rgb  # the files' conversion: PIL inputs go through it too

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]
"""One image: a file path, the encoded file's bytes, a PIL image, or an HxWx3 uint8 RGB array."""

ACCEPTED = "a file path (str or PathLike), bytes, a PIL image or an HxWx3 uint8 numpy array, or a list of them"
_URL_SCHEMES = ("http://", "https://", "ftp://")


def is_single(inputs: object) -> bool:
    """Whether ``inputs`` is one image (so ``detector(x)`` answers with one Prediction, not a list)."""
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
        return item if item.mode == "RGB" else to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_image(item, f"input {index}")
    if isinstance(item, (bytearray, memoryview)):
        item = bytes(item)
    if isinstance(item, bytes):
        return decode_image(item, max_pixels=max_pixels, name=f"input {index} (bytes)")
    if isinstance(item, (str, os.PathLike)):
        return decode_image(item, max_pixels=max_pixels)
    raise TypeError(f"input {index}: cannot score a {type(item).__name__}; give {ACCEPTED}")


def check_inputs(items: Sequence[object]) -> None:
    """Refuse, before any work, inputs that are the caller's mistake: a kind that is not an image
    input, a URL (nothing is downloaded), an array that is not HxWx3 uint8."""
    for index, item in enumerate(items):
        if isinstance(item, str) and item.strip().lower().startswith(_URL_SCHEMES):
            raise ValueError(f"input {index}: {item!r} is a URL; diffsleuth does not download images: "
                             "download the file first and pass its path (or its bytes)")
        if isinstance(item, np.ndarray):
            array_to_image(item[:1, :1] if item.ndim == 3 else item, f"input {index}")  # shape and dtype only
        elif not isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
            raise TypeError(f"input {index}: cannot score a {type(item).__name__}; give {ACCEPTED}")


def read_input(item: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS, index: int = 0) -> Image.Image | str:
    """One (checked) input as an RGB image, or why it could not be read: what a bad file costs is
    its own result, never the batch's."""
    try:
        image = as_rgb_image(item, max_pixels, index)
        image.load()
        return image
    except ImageDecodeError as exc:
        return str(exc)
    except (OSError, ValueError, MemoryError) as exc:  # a PIL image whose pixels cannot be loaded
        return f"input {index}: cannot read this image ({type(exc).__name__}: {exc})"


def input_list(inputs: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One input or a sequence of them (an NxHxWx3 array is N images) as a list of inputs."""
    if is_single(inputs):
        return [inputs]  # type: ignore[list-item]
    if isinstance(inputs, (dict, set, frozenset)) or not hasattr(inputs, "__iter__"):
        raise TypeError(f"cannot score a {type(inputs).__name__}; give {ACCEPTED}")
    return list(inputs)  # type: ignore[arg-type]


def is_file_input(item: object) -> bool:
    """Whether ``item`` is a file (a path or encoded bytes), whose metadata can be read, not only pixels."""
    return isinstance(item, (str, os.PathLike, bytes, bytearray, memoryview))

