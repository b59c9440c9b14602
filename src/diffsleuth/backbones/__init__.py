"""Pretrained backbones (Stable Diffusion, DDPM, CLIP, ResNet-50), by hub id or local folder.

Names are imported on first use (PEP 562), so a light submodule (``backbones.pypi_weights``,
``backbones.hub``) does not import torch through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = dict.fromkeys(("DDPM_BEDROOM_ID", "SD15_ID", "BackboneUnavailableError", "StableDiffusionParts",
                       "load_clip", "load_ddpm", "load_resnet50", "load_stable_diffusion"),
                      "diffsleuth.backbones.loading")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffsleuth.backbones' has no attribute {name!r}")


__all__ = sorted(_LAZY)
