"""Explicit device and dtype choice, so the same code runs on CPU, CUDA and MPS."""

from __future__ import annotations

import torch

_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cuda:N`` / ``mps`` / ``cpu`` are checked."""
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
    text = precision.strip().lower()
    if text == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if text not in _PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (auto, fp32, fp16, bf16)")
    return _PRECISIONS[text]
