"""Explicit device and dtype choice, so the same code runs on CPU, CUDA and MPS.

torch is imported inside the functions that need it: the base install (no torch) scores on the
CPU through onnxruntime and only asks :func:`torch_installed` and :func:`needs_torch`.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_cpu_threads: int | None = None


def torch_installed() -> bool:
    """Whether torch can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def set_cpu_threads(threads: int | None) -> None:
    """The CPU threads every model in this process uses (``--threads``): onnxruntime sessions made
    from now on, and torch's when torch is already imported (else when a torch model loads)."""
    global _cpu_threads
    _cpu_threads = threads
    if threads is not None and sys.modules.get("torch") is not None:
        sys.modules["torch"].set_num_threads(threads)


def cpu_threads() -> int:
    """Threads for an onnxruntime session: ``--threads`` when given, else torch's count when torch is
    already imported (a Ray actor limits it first), else every CPU."""
    if _cpu_threads is not None:
        return _cpu_threads
    if sys.modules.get("torch") is not None:
        return int(sys.modules["torch"].get_num_threads())
    return os.cpu_count() or 1


def apply_torch_threads() -> None:
    """Give torch the ``--threads`` count (called when a torch model is about to load)."""
    if _cpu_threads is not None:
        import torch

        torch.set_num_threads(_cpu_threads)


def needs_torch(device: Any = "cpu", precision: Any = None) -> bool:
    """Whether scoring on ``device`` at ``precision`` needs torch: any accelerator, or half precision.
    ``auto`` is the CPU when torch is not installed (nothing else could run it) and otherwise what
    :func:`resolve_device` picks."""
    text = str(precision).strip().lower() if precision is not None else "auto"
    if text not in ("auto", "fp32", "torch.float32"):
        return True
    kind = str(device).strip().lower()
    if kind == "auto":
        return torch_installed() and resolve_device("auto").type != "cpu"
    return kind != "cpu"


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cuda:N`` / ``mps`` / ``cpu`` are checked."""
    import torch

    if isinstance(spec, torch.device):
        return spec
    text = spec.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {spec!r} (auto, cpu, cuda, cuda:N or mps)") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} requested but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {spec!r}")
    return device


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """``auto`` is fp16 on CUDA and fp32 elsewhere (CPU half precision is slow and lossy)."""
    import torch

    precisions = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    text = precision.strip().lower()
    if text == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if text not in precisions:
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, fp16, bf16)")
    return precisions[text]
