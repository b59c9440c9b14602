"""Image input: safe decoding, dataset layouts, degradations and preprocessing."""

from diffsleuth.io.datasets import (
    FAKE,
    REAL,
    DatasetError,
    ImageRecord,
    assign_splits,
    expand_inputs,
    load_records,
)
from diffsleuth.io.decode import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image
from diffsleuth.io.degrade import Degradation, parse_degradation
from diffsleuth.io.preprocess import PreprocessConfig, preprocess_batch

__all__ = [
    "DEFAULT_MAX_PIXELS", "FAKE", "REAL", "DatasetError", "Degradation", "ImageDecodeError",
    "ImageRecord", "PreprocessConfig", "assign_splits", "decode_image", "expand_inputs",
    "load_records", "parse_degradation", "preprocess_batch",
]
