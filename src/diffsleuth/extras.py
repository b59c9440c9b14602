"""Optional dependencies, grouped as the package's pip extras, and one clear error when one is missing.

The base install (``pip install diffsleuth``) is what scanning with the shipped default detector
needs. Everything else is an extra; code that needs one imports it inside the function that uses
it and calls :func:`require` first, so a missing extra is a one-line message naming what to
install, not a ``ModuleNotFoundError`` from deep inside a library.
"""

from __future__ import annotations

import importlib.util

EXTRAS: dict[str, tuple[str, ...]] = {
    "eval": ("sklearn", "scipy", "matplotlib"),
    "train": ("accelerate", "sklearn"),
    "research": ("diffusers", "transformers", "open_clip", "accelerate", "sklearn"),
    "server": ("fastapi", "uvicorn", "multipart"),
    "distributed": ("ray",),
}


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, purpose: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` is installed."""
    absent = missing(extra)
    if absent:
        raise MissingExtraError(f"{purpose} needs the '{extra}' extra ({', '.join(absent)} not installed): "
                                f"pip install 'diffsleuth[{extra}]'")
