"""Images per second of the pinned CLIP ONNX encoder, alone and inside a judge scan.

The judge's head is random (its cost is negligible next to the encoder); the encoder is the real
pinned file (fetched into the weights cache on first use). ``encoder`` rows time
``embed_images`` (one 224 view per image); ``judge cover`` rows time ``JudgeDetector.predict``
with the whole-image grid (``max_short_side`` 448: 1 crop at 256 px, 2x2 crops at 1024 px).

    .venv/bin/python benchmarks/encoder_speed.py --images 16 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from diffsleuth.backbones.onnx_encoder import OnnxImageEncoder, embed_images
from diffsleuth.backbones.pypi_weights import CLIP_VIT_B16_INT8, ensure
from diffsleuth.detectors.judge.model import JudgeConfig, JudgeDetector


def images(n: int, side: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


def rate(label: str, run, n: int) -> None:
    run()  # warm-up: session creation, first-call allocations
    start = time.perf_counter()
    run()
    print(f"{label}: {n / (time.perf_counter() - start):.2f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = ensure(CLIP_VIT_B16_INT8)
    encoder = OnnxImageEncoder(path)
    small = images(args.images, 256)
    rate(f"encoder, 256 px (one image per onnxruntime call), {args.threads} threads",
         lambda: embed_images(small, encoder), args.images)
    judge = JudgeDetector(JudgeConfig(encoder="onnx", backbone=str(path), grid="cover", max_short_side=448),
                          encoder=encoder).eval()
    for side in (256, 1024):
        batch_images = images(args.images, side)
        rate(f"judge cover, {side} px ({'x'.join(map(str, judge.views(batch_images[0])[1:]))} crops), "
             f"{args.threads} threads", lambda: judge.predict(batch_images, batch_size=16), args.images)


if __name__ == "__main__":
    main()
