"""Image input: safe decoding, dataset layouts, degradations and preprocessing.

Names are imported on first use (PEP 562): importing one light submodule such as
``diffsleuth.io.decode`` must not pull torch in through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    **dict.fromkeys(("FAKE", "REAL", "DatasetError", "ImageRecord", "assign_splits", "expand_inputs",
                     "load_records"), "diffsleuth.io.datasets"),
    **dict.fromkeys(("DEFAULT_MAX_PIXELS", "ImageDecodeError", "decode_image"), "diffsleuth.io.decode"),
    **dict.fromkeys(("Degradation", "parse_degradation"), "diffsleuth.io.degrade"),
    **dict.fromkeys(("PreprocessConfig", "preprocess_batch"), "diffsleuth.io.preprocess"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffsleuth.io' has no attribute {name!r}")


__all__ = sorted(_LAZY)
