"""Optional dependencies, grouped as the package's pip extras, and one clear error when one is missing.

The base install (``pip install diffsleuth``) is what scanning with the shipped default detector
needs: onnxruntime on the CPU, no torch. torch comes with ``gpu`` (scanning on CUDA/MPS, half
precision, the torch-only detectors) and with every extra whose code trains or evaluates models. Everything else is an extra; code that needs one imports it inside the function that uses
it and calls :func:`require` first, so a missing extra is a one-line message naming what to
install, not a ``ModuleNotFoundError`` from deep inside a library.
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    "gpu": ("torch", "torchvision"),
    "eval": ("torch", "sklearn", "scipy", "matplotlib"),
    "train": ("torch", "torchvision", "accelerate", "sklearn"),
    "research": ("torch", "torchvision", "diffusers", "transformers", "open_clip", "accelerate", "sklearn"),
    "server": ("fastapi", "uvicorn", "multipart"),
    "distributed": ("torch", "ray"),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if not _findable(m)]


def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked) is not installed
        return False


def require(extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` is installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{purpose} needs the '{extra}' extra ({', '.join(absent)} not installed): "
                                f"pip install 'diffsleuth[{extra}]'")


def require_torch(purpose: str, extra: str = "gpu") -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` unless torch is installed (only torch is
    checked: ``purpose`` needs torch, not the rest of the extra)."""
    if not _findable("torch"):
        raise MissingExtraError(f"{purpose} needs torch, which the base install leaves out: "
                                f"pip install 'diffsleuth[{extra}]'")
